"""Logits parity with transformers' GPTNeoForCausalLM, dtype and bad-input behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import SHAPES, hf_logits, left_padded_batch

from neojax.checkpoint.hf import load_hf
from neojax.model import GPTNeo, init_params, position_ids_from_mask, preset

TOL = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_match_transformers(hf_dirs, shape):
    directory, torch_model, seq_len = hf_dirs[shape]
    config, params, _ = load_hf(directory)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, seq_len))
    ours = np.asarray(jax.jit(GPTNeo(config).apply)({"params": params}, tokens))
    ref = hf_logits(torch_model, tokens)
    assert ours.shape == ref.shape == (2, seq_len, config.vocab_size)
    diff = np.abs(ours - ref).max()
    print(f"{shape}: max |logit diff| = {diff:.3g}")
    assert diff < TOL
    assert np.abs(ref).max() > 0.5  # the weights are large enough for the comparison to mean something


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_left_padding_matches_transformers(hf_dirs, shape):
    directory, torch_model, seq_len = hf_dirs[shape]
    config, params, _ = load_hf(directory)
    tokens, mask = left_padded_batch(np.random.default_rng(2), config.vocab_size, seq_len)
    ours = np.asarray(jax.jit(GPTNeo(config).apply)({"params": params}, tokens, attention_mask=mask))
    # transformers' plain forward needs explicit positions for left padding.
    ref = hf_logits(torch_model, tokens, mask, np.asarray(position_ids_from_mask(jnp.asarray(mask))))
    real = mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    print(f"{shape} (left padded): max |logit diff| = {diff:.3g}")
    assert diff < TOL
    # Padding really is ignored: the unpadded suffix of a padded row equals the row run alone.
    n = int((1 - mask[2]).sum())
    alone = np.asarray(jax.jit(GPTNeo(config).apply)({"params": params}, tokens[2:3, n:]))
    np.testing.assert_allclose(ours[2, n:], alone[0], atol=TOL)


def test_bfloat16_stays_close_to_float32(hf_dirs):
    directory, _, seq_len = hf_dirs["default_window"]
    config, params, _ = load_hf(directory)
    tokens = np.random.default_rng(3).integers(0, config.vocab_size, size=(2, seq_len))
    f32 = np.asarray(jax.jit(GPTNeo(config).apply)({"params": params}, tokens))
    bf16 = jax.jit(GPTNeo(config.replace(dtype="bfloat16")).apply)({"params": params}, tokens)
    assert bf16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    rel = np.abs(np.asarray(bf16) - f32).max() / np.abs(f32).max()
    assert rel < 0.05, rel
    assert (np.argmax(bf16, -1) == np.argmax(f32, -1)).mean() > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_nothing_numerically(remat):
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    tokens = jnp.arange(40).reshape(2, 20) % config.vocab_size

    def loss(p, cfg):
        return GPTNeo(cfg).apply({"params": p}, tokens).mean()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g0 = grad(params, config)
    g1 = grad(params, config.replace(remat=remat))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_every_decoding_mode_runs_through_rematerialised_blocks(remat):
    """Prefill, Decode and Extend (neojax.model.modes) pass through nn.remat like any pytree: a
    config trained with remat decodes exactly as one without."""
    from neojax.infer.cache import slot_cache
    from neojax.infer.programs import decode_step, prefill
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    tokens, mask = jnp.arange(12).reshape(2, 6) % config.vocab_size, jnp.ones((2, 6), jnp.int32)

    def run(cfg):
        logits, cache, position = prefill(params, cfg, tokens, mask, 10)
        stepped, _ = decode_step(params, cfg, cache, jnp.argmax(logits, -1), position + 1, 6)
        slots = [slot_cache(2, cfg.num_heads, 16, cfg.head_dim, jnp.float32) for _ in cfg.attention_layers]
        extended, _ = GPTNeo(cfg).apply({"params": params}, tokens, jnp.array([0, 3]), slots, method=GPTNeo.extend)
        return logits, stepped, extended

    run = jax.jit(run, static_argnums=0)  # one program each, as a server runs them (not op by op)
    for plain, rematted in zip(run(config), run(config.replace(remat=remat))):
        np.testing.assert_allclose(rematted, plain, atol=1e-6)


@pytest.mark.slow
def test_dropout_follows_the_full_pass_train_flag():
    config = preset("tiny").replace(embed_dropout=0.5, attention_dropout=0.5, resid_dropout=0.5)
    params = init_params(config, jax.random.key(0))
    tokens = jnp.arange(16).reshape(2, 8)
    model = GPTNeo(config)
    evaluated = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(evaluated, model.apply({"params": params}, tokens))
    trained = model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert np.abs(np.asarray(trained) - np.asarray(evaluated)).max() > 1e-3


def test_init_shapes_and_logical_axes():
    from neojax.model import logical_axes, param_shapes
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    assert params["wte"].shape == (config.vocab_size, config.hidden_size)
    assert params["h_0"]["attn"]["q_proj"]["kernel"].shape == (64, 64)
    assert "bias" not in params["h_0"]["attn"]["q_proj"]  # q/k/v have no bias
    assert params["h_1"]["mlp"]["c_fc"]["kernel"].shape == (64, 256)
    assert abs(float(params["wte"].std()) - 0.02) < 0.002
    axes = logical_axes(config)
    assert tuple(axes["h_0"]["attn"]["q_proj"]["kernel"]) == ("embed", "heads")
    assert tuple(axes["h_0"]["mlp"]["c_proj"]["kernel"]) == ("mlp", "embed")
    assert tuple(axes["wte"]) == ("vocab", "embed")
    assert jax.tree.map(lambda s: s.shape, param_shapes(config)) == jax.tree.map(lambda a: a.shape, params)


@pytest.mark.slow
def test_presets_match_released_configs():
    expected = {"gpt-neo-125M": (768, 12, 12, 125), "gpt-neo-350M": (1024, 24, 16, 350),
                "gpt-neo-1.3B": (2048, 24, 16, 1300), "gpt-neo-2.7B": (2560, 32, 20, 2700)}
    from neojax.model import param_shapes
    for name, (d, layers, heads, millions) in expected.items():
        cfg = preset(name)
        assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (d, layers, heads)
        assert cfg.window_size == 256 and cfg.max_position_embeddings == 2048 and cfg.vocab_size == 50257
        assert cfg.attention_layers == ("global", "local") * (layers // 2)
        n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(param_shapes(cfg)))
        assert abs(n / 1e6 - millions) / millions < 0.12, (name, n)


def test_token_ids_out_of_vocabulary_are_rejected():
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        GPTNeo(config).apply({"params": params}, np.array([[1, 2, config.vocab_size]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        GPTNeo(config).apply({"params": params}, np.array([[-1, 2]]))


def test_sequence_longer_than_positions_is_rejected():
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        GPTNeo(config).apply({"params": params}, np.zeros((1, config.max_position_embeddings + 1), np.int32))


def test_one_dimensional_tokens_are_rejected():
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        GPTNeo(config).apply({"params": params}, np.zeros((5,), np.int32))


def test_jit_does_not_retrace_for_new_values():
    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    traces = []

    @jax.jit
    def f(p, t):
        traces.append(1)
        return GPTNeo(config).apply({"params": p}, t)

    for seed in range(3):
        f(params, jax.random.randint(jax.random.key(seed), (2, 16), 0, config.vocab_size))
    assert len(traces) == 1
