"""Attention kernels against a float64 numpy reference of GPT-Neo's definition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neojax.model import GPTNeoConfig
from neojax.model.attention import global_attention, local_attention


def reference(q, k, v, key_mask, window):
    """Dense float64: softmax over keys j with i - window < j <= i (window None = causal), no scaling."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    allowed = j <= i if window is None else (j <= i) & (j > i - window)
    allowed = allowed[None, None] & key_mask[:, None, None, :]
    scores = np.where(allowed, scores, -np.inf)
    rows_empty = ~allowed.any(-1, keepdims=True)
    scores = np.where(rows_empty, 0.0, scores)  # fully masked rows: a uniform average (as with float32 min)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = np.where(allowed | rows_empty, p, 0.0)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v), rows_empty[:, 0, :, 0]


def _inputs(t, seed=0, b=2, h=2, d=4, pads=(0, 5)):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3))
    key_mask = np.ones((b, t), bool)
    for row, n in enumerate(pads[:b]):
        key_mask[row, :n] = False
    return q, k, v, key_mask


@pytest.mark.parametrize("t,window,block", [(40, 8, 8), (37, 8, 3), (50, 7, 4), (64, 16, 16), (33, 40, 8),
                                            (300, 256, 128), (129, 5, 128)])
def test_local_attention_matches_float64_reference(t, window, block):
    q, k, v, key_mask = _inputs(t)
    cfg = GPTNeoConfig(num_layers=1, attention_types=[[["local"], 1]], window_size=window, local_block_size=block,
                       hidden_size=8, num_heads=2)
    ours = np.asarray(jax.jit(local_attention, static_argnums=4)(q, k, v, key_mask, cfg))
    ref, empty = reference(q, k, v, key_mask, window)
    keep = ~empty  # queries with no visible key (inside the left padding) are don't-care
    np.testing.assert_allclose(ours[keep], ref[keep], atol=2e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("block", [0, 16, 7])  # dense, blocks dividing unevenly, blocks of 7
def test_global_attention_matches_float64_reference(block):
    q, k, v, key_mask = _inputs(45, seed=3)
    cfg = GPTNeoConfig(num_layers=1, attention_types=[[["global"], 1]], hidden_size=8, num_heads=2,
                       global_block_size=block)
    ours = np.asarray(global_attention(q, k, v, key_mask, cfg))
    ref, empty = reference(q, k, v, key_mask, None)
    np.testing.assert_allclose(ours[~empty], ref[~empty], atol=2e-5, rtol=1e-5)


def test_local_attention_never_builds_a_t_by_t_matrix():
    """Memory of the blocked kernel grows linearly: no intermediate has T*T elements."""
    t, window = 1024, 64
    cfg = GPTNeoConfig(num_layers=1, attention_types=[[["local"], 1]], window_size=window, local_block_size=64,
                       hidden_size=8, num_heads=1)
    q = jnp.zeros((1, t, 1, 8))
    jaxpr = jax.make_jaxpr(lambda q: local_attention(q, q, q, None, cfg))(q)
    biggest = max(int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars)
    assert biggest <= t * 2 * window, biggest
    assert biggest < t * t // 4


def test_blocked_global_attention_skips_the_masked_triangle():
    """Score elements computed: sum over query blocks of block x (keys up to the block's end)."""
    t, block = 1024, 256
    cfg = GPTNeoConfig(num_layers=1, attention_types=[[["global"], 1]], hidden_size=8, num_heads=1,
                       global_block_size=block)
    q = jnp.zeros((1, t, 1, 8))
    jaxpr = jax.make_jaxpr(lambda q: global_attention(q, q, q, None, cfg))(q)
    scores = sum(int(np.prod(e.outvars[0].aval.shape)) for e in jaxpr.eqns
                 if e.primitive.name == "dot_general" and e.outvars[0].aval.shape[-1] % block == 0)  # q.k, not p.v
    assert scores == block * block * (1 + 2 + 3 + 4), scores  # 10/16 of t*t


def test_scores_are_float32_and_unscaled_in_bfloat16():
    """q.k is not divided by sqrt(head_dim), and bf16 inputs still get float32 softmax."""
    q = jnp.zeros((1, 2, 1, 4), jnp.bfloat16).at[0, 1, 0, 0].set(3.0)
    k = jnp.zeros((1, 2, 1, 4), jnp.bfloat16).at[0, 1, 0, 0].set(1.0)
    v = jnp.eye(2, 4, dtype=jnp.bfloat16)[None, :, None, :]
    cfg = GPTNeoConfig(num_layers=1, attention_types=[[["global"], 1]], hidden_size=4, num_heads=1)
    out = global_attention(q, k, v, None, cfg)
    assert out.dtype == jnp.bfloat16
    p1 = float(out[0, 1, 0, 1])  # weight on key 1 for query 1: softmax([0, 3])[1]
    assert abs(p1 - 1 / (1 + np.exp(-3.0))) < 1e-2


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN fused attention exists only on GPUs")
@pytest.mark.parametrize("kind", ["global", "local"])
def test_fused_gpu_attention_matches_float32_kernels(kind):
    """On GPUs, bf16 unpadded attention runs fused (cuDNN); forward and gradients match float32."""
    cfg = GPTNeoConfig(hidden_size=512, num_heads=4, num_layers=1, attention_types=[[[kind], 1]])
    fn = global_attention if kind == "global" else local_attention
    q, k, v, g = (jax.random.normal(key, (2, 1024, 4, 128), jnp.bfloat16) * 0.3
                  for key in jax.random.split(jax.random.key(0), 4))
    fused_out, fused_vjp = jax.vjp(lambda q, k, v: fn(q, k, v, None, cfg), q, k, v)
    with jax.default_matmul_precision("highest"):
        f32 = lambda x: x.astype(jnp.float32)
        ref_out, ref_vjp = jax.vjp(lambda q, k, v: fn(q, k, v, None, cfg), f32(q), f32(k), f32(v))
        ref_grads = ref_vjp(f32(g))
    rel = lambda a, b: float(jnp.linalg.norm(f32(a) - b) / jnp.linalg.norm(b))
    assert rel(fused_out, ref_out) < 2e-2
    for ours, ref in zip(fused_vjp(g), ref_grads):
        assert rel(ours, ref) < 3e-2
