"""int8 weights and KV cache: rounding bounds against float64 numpy, logits and generation close to
float32, real memory, checkpoints that round-trip bit for bit."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import device_env, exit_of

from neojax import checkpoint
from neojax.generate import generate
from neojax.model import GPTNeo, GPTNeoConfig, init_params, param_shapes, preset
from neojax.model.quant import dequantize_params, param_bytes, quantize, quantize_params, quantized_shapes

CFG = GPTNeoConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                   window_size=8, max_position_embeddings=64)


def _params(seed=0):
    return jax.tree.map(lambda x: x * 4 if x.ndim == 2 else x, init_params(CFG, jax.random.key(seed)))


def test_quantize_matches_float64_numpy_and_its_bound():
    w = np.random.default_rng(0).normal(size=(48, 20)) * np.linspace(0.01, 3, 20)
    w[:, 3] = 0  # an all-zero channel
    values, scale = jax.device_get(quantize(jnp.asarray(w, jnp.float32), axis=0))
    want_scale = np.where(np.abs(w).max(0) > 0, np.abs(w).max(0) / 127, 1.0)
    np.testing.assert_allclose(scale, want_scale, rtol=1e-6)
    assert values.dtype == np.int8 and np.abs(values).max() <= 127 and (values[:, 3] == 0).all()
    err = np.abs(values.astype(np.float64) * scale - w)
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-7).all()  # round to nearest: at most half a step per channel
    np.testing.assert_array_equal(values, np.clip(np.round(w.astype(np.float32) / scale.astype(np.float32)),
                                                  -127, 127))


@pytest.mark.slow
def test_quantized_logits_and_greedy_tokens_stay_close():
    params = _params()
    q = quantize_params(params)
    assert {str(x.dtype) for x in jax.tree.leaves(q)} == {"int8", "float32"}
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 30))
    ref = np.asarray(GPTNeo(CFG).apply({"params": params}, tokens))
    got = np.asarray(GPTNeo(CFG).apply({"params": q}, tokens))
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.03  # the stated tolerance: 3% of the logit range
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9
    deq = np.asarray(GPTNeo(CFG).apply({"params": dequantize_params(q)}, tokens))
    np.testing.assert_allclose(got, deq, rtol=1e-4, atol=1e-4)  # int8 compute = float compute of the rounded weights
    a = generate(params, CFG, [[5, 6, 7]], max_new_tokens=12).tokens
    b = generate(q, CFG, [[5, 6, 7]], max_new_tokens=12).tokens
    assert a[0][:4] == b[0][:4]


@pytest.mark.slow
def test_decoding_path_logprobs_equal_the_forward_pass_and_int8_cache_stays_close():
    from neojax.infer.programs import cached_logprobs
    params = _params(2)
    tokens = np.random.default_rng(3).integers(0, CFG.vocab_size, (2, 40))  # past the local window
    logits = np.asarray(GPTNeo(CFG).apply({"params": params}, tokens), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(cached_logprobs(params, CFG, tokens)), want, atol=2e-4)
    int8 = np.asarray(cached_logprobs(params, CFG.replace(kv_cache="int8"), tokens))
    assert 0 < np.abs(int8 - want).max() < 0.1  # the int8 cache is used (not identical) and stays close


@pytest.mark.slow
def test_int8_kv_cache_decodes_like_the_float_cache():
    params = _params(1)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]  # a ring (local window 8) and left padding
    a = generate(params, CFG, prompts, max_new_tokens=20)
    b = generate(params, CFG.replace(kv_cache="int8"), prompts, max_new_tokens=20)
    agree = np.mean([x == y for ra, rb in zip(a.tokens, b.tokens) for x, y in zip(ra, rb)])
    assert agree > 0.8


@pytest.mark.slow
def test_int8_params_take_a_quarter_of_float32_in_device_memory():
    config = preset("gpt-neo-125M")
    assert param_bytes(quantized_shapes(param_shapes(config))) / param_bytes(param_shapes(config)) <= 0.27
    # made, on a narrower model (60 MB): the arrays in device memory are the ones the shapes count
    config = config.replace(num_layers=2, hidden_size=256, num_heads=4, attention_types=((("global", "local"), 1),))
    live = lambda: sum(x.nbytes for x in jax.live_arrays())
    before = live()
    params = init_params(config, jax.random.key(0))
    float_bytes = live() - before
    assert float_bytes == param_bytes(param_shapes(config))
    q = jax.block_until_ready(quantize_params(params))
    del params
    assert live() - before == param_bytes(quantized_shapes(param_shapes(config)))
    del q


def test_quantized_checkpoint_round_trip_and_size(tmp_path, tiny_hf_with_tokenizer):
    model = checkpoint.load(tiny_hf_with_tokenizer, quantize="int8")
    path = checkpoint.save(str(tmp_path / "q"), model, to="neojax")
    again = checkpoint.load(path)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="int8"):
        checkpoint.save(str(tmp_path / "hf"), again, to="hf")


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          env=device_env(1))


@pytest.mark.slow
def test_convert_quantize_generate_and_refusals(tmp_path, tiny_hf_with_tokenizer, capsys):
    from neojax import convert
    from neojax.evaluate.__main__ import main as evaluate

    def refused(main, *argv) -> str:
        code, err = exit_of(main, argv, capsys)
        assert code == 2, err
        return err
    src, dst, flt = tiny_hf_with_tokenizer, str(tmp_path / "q8"), str(tmp_path / "f32")
    assert _run("neojax.convert", src, flt, "--to", "neojax").returncode == 0
    r = _run("neojax.convert", src, dst, "--quantize", "int8")
    assert r.returncode == 0 and "int8" in r.stdout, r.stderr
    # the arrays' bytes (orbax's data files; its metadata, larger than a tiny model's weights, varies by run)
    size = lambda d: sum(os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(os.path.join(d, "params"))
                         if os.path.basename(root) == "d" for f in fs)
    assert 0 < size(dst) < 0.5 * size(flt)  # tiny: float32 position embeddings and scales weigh; 125M is ~0.26
    r = _run("neojax.generate", "--checkpoint", dst, "--prompt", "The quick", "--max_new_tokens", "8",
             "--kv_cache", "int8")
    assert r.returncode == 0, r.stderr
    err = refused(convert.main, dst, str(tmp_path / "hf"), "--to", "hf")
    assert "int8" in err and "--dequantize" in err
    r = _run("neojax.convert", dst, str(tmp_path / "hf"), "--to", "hf", "--dequantize")
    assert r.returncode == 0, r.stderr
    assert "neojax directory" in refused(convert.main, src, str(tmp_path / "x"), "--to", "hf", "--quantize", "int8")
    assert "int4" in refused(evaluate, "--checkpoint", src, "--quantize", "int4", "--tasks", "piqa")
