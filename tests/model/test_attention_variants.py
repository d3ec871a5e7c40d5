"""Every registered attention variant passes the same property checks; each shipped variant also
matches an independent float64 numpy version of its paper's definition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neojax import registry
from neojax.model import GPTNeoConfig
from neojax.model.attention import AttentionVariant
from neojax.model.variants import alibi_attention, alibi_slopes, linear_attention, rotary
from neojax.testing import CHECKS, check_causality, check_window, variant_config


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", registry.names("attention"))
def test_every_registered_variant_has_the_properties(name, check):
    print(name, check, CHECKS[check](name))


def test_shipped_variants_are_registered():
    assert {"global", "local", "rotary", "alibi", "linear"} <= set(registry.names("attention"))


def test_checks_catch_a_variant_that_sees_the_future():
    def leaky(q, k, v, key_mask, config, dropout=lambda p: p, positions=None):
        return v + jnp.roll(v, -1, axis=1)  # position t reads t + 1
    with registry.scoped("attention", "leaky", AttentionVariant(leaky)):
        with pytest.raises(AssertionError, match="not causal"):
            check_causality("leaky")
    assert "leaky" not in registry.names("attention")


def test_checks_catch_a_wrong_window_claim():
    local = registry.get("attention", "local")
    claims_less = AttentionVariant(local.attend, window=lambda config: config.window_size - 2)
    with registry.scoped("attention", "claims_less", claims_less):
        with pytest.raises(AssertionError, match="reaches past it"):
            check_window("claims_less")


def _qkv(t=37, b=2, h=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3)]


def _softmax_reference(scores, allowed, v):
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_rotary_matches_float64_rotation_and_is_relative():
    """RoFormer's rotation of pairs (i, i + d/2) by angle pos * 10000^(-2i/d), in float64; and
    q.k after rotation depends only on the distance between the two positions."""
    q, k, _ = _qkv(t=5)
    cfg = variant_config("rotary", hidden_size=32, num_heads=4)
    positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 200]])
    rq, rk = (np.asarray(x, np.float64) for x in rotary(jnp.asarray(q), jnp.asarray(k), jnp.asarray(positions), cfg))
    d = cfg.head_dim
    theta = positions[..., None, None] * 10000.0 ** (-np.arange(d // 2) * 2.0 / d)  # [b, t, 1, d/2]
    x1, x2 = q[..., :d // 2].astype(np.float64), q[..., d // 2:].astype(np.float64)
    ref = np.concatenate([x1 * np.cos(theta) - x2 * np.sin(theta), x2 * np.cos(theta) + x1 * np.sin(theta)], -1)
    np.testing.assert_allclose(rq, ref, atol=1e-4)  # float32 angles at position 200
    # Same vectors at positions (3, 1) and (13, 11): equal dot products.
    one = lambda pos: rotary(jnp.asarray(q[:1, :2]), jnp.asarray(q[:1, :2]), jnp.asarray([pos]), cfg)
    a, b = one([3, 1]), one([13, 11])
    dot = lambda r: np.einsum("hd,hd->h", np.asarray(r[0][0, 0]), np.asarray(r[1][0, 1]))
    np.testing.assert_allclose(dot(a), dot(b), rtol=1e-4, atol=1e-4)


def test_partial_rotary_leaves_the_rest_untouched():
    q, k, _ = _qkv(t=4)
    cfg = variant_config("rotary", hidden_size=32, num_heads=4)
    rq, _ = rotary(jnp.asarray(q), jnp.asarray(k), jnp.arange(4)[None], cfg, fraction=0.25)
    np.testing.assert_array_equal(np.asarray(rq)[..., 2:], q[..., 2:])
    assert not np.allclose(np.asarray(rq)[:, 1:, :, :2], q[:, 1:, :, :2])


def test_alibi_slopes_follow_the_paper():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    np.testing.assert_allclose(alibi_slopes(4), [2.0 ** -(2 * (i + 1)) for i in range(4)])
    # 6 heads: the 4-head slopes, then the 1st and 3rd of the 8-head ones.
    np.testing.assert_allclose(alibi_slopes(6), [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])


@pytest.mark.slow
@pytest.mark.parametrize("block", [0, 8])
def test_alibi_matches_float64_reference(block):
    q, k, v = _qkv()
    t, h = q.shape[1], q.shape[2]
    cfg = variant_config("alibi", global_block_size=block)
    key_mask = np.ones((2, t), bool)
    key_mask[1, :4] = False
    ours = np.asarray(alibi_attention(q, k, v, key_mask, cfg))
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    slopes = 2.0 ** (-8.0 * np.arange(1, h + 1) / h)
    scores = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64)) - slopes[:, None, None] * (i - j)
    ref = _softmax_reference(scores, (j <= i)[None, None] & key_mask[:, None, None, :], v.astype(np.float64))
    np.testing.assert_allclose(ours[0], ref[0], atol=2e-5)
    np.testing.assert_allclose(ours[1, 4:], ref[1, 4:], atol=2e-5)  # rows inside the padding are don't-care


@pytest.mark.parametrize("t", [37, 64, 150])  # shorter than, equal to and across linear chunks
def test_linear_attention_matches_float64_definition(t):
    """out_i = sum_{j<=i} (phi(q_i).phi(k_j)) v_j / sum_{j<=i} phi(q_i).phi(k_j), phi = elu + 1."""
    q, k, v = _qkv(t=t, seed=t)
    key_mask = np.ones((2, t), bool)
    key_mask[1, :5] = False
    cfg = variant_config("linear")
    ours = np.asarray(jax.jit(linear_attention, static_argnums=4)(q, k, v, key_mask, cfg))
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0)))
    weights = np.einsum("bqhd,bkhd->bhqk", phi(q.astype(np.float64)), phi(k.astype(np.float64)))
    allowed = (np.arange(t)[None, :] <= np.arange(t)[:, None])[None, None] & key_mask[:, None, None, :]
    weights = np.where(allowed, weights, 0.0)
    with np.errstate(invalid="ignore"):  # rows inside the padding see no key: 0/0, not compared
        ref = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v.astype(np.float64))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours[1, 5:], ref[1, 5:], rtol=1e-4, atol=1e-5)


def test_rotary_model_differs_from_global_only_by_the_rotation():
    """With positions all zero the rotation is the identity, so rotary layers equal global ones."""
    from neojax.model import GPTNeo, init_params
    glob, rot = variant_config("global"), variant_config("rotary")
    params = init_params(glob, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 10))
    zeros = np.zeros_like(tokens)
    a = GPTNeo(glob).apply({"params": params}, tokens, position_ids=zeros)
    b = GPTNeo(rot).apply({"params": params}, tokens, position_ids=zeros)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    c = GPTNeo(rot).apply({"params": params}, tokens)
    assert np.abs(np.asarray(c) - np.asarray(GPTNeo(glob).apply({"params": params}, tokens))).max() > 1e-3


def test_unknown_variant_lists_the_registry():
    cfg = GPTNeoConfig(vocab_size=16, hidden_size=8, num_heads=2, num_layers=1, attention_types=[[["flash9"], 1]])
    from neojax.model import GPTNeo
    with pytest.raises(KeyError, match="registered attention names.*rotary"):
        GPTNeo(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_export_to_transformers_refuses_variants_it_cannot_run():
    cfg = variant_config("rotary")
    with pytest.raises(ValueError, match="rotary.*global.*local"):
        cfg.to_hf_dict()
