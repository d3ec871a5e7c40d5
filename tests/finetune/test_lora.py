"""LoRA: adapters selected by rules, merged weights equal base + scale * A @ B (float64), the base
stays bit-identical through training with no optimizer state, adapters save and load alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neojax import sharding
from neojax.finetune.lora import Lora, load_adapters, merge, save_adapters
from neojax.model import GPTNeo, GPTNeoConfig, init_params, preset

CFG = GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                   window_size=8, max_position_embeddings=32)


def _random_adapters(params, seed=1):
    rng = np.random.default_rng(seed)
    params["lora"] = {k: {"a": rng.normal(size=v["a"].shape).astype(np.float32),
                          "b": rng.normal(size=v["b"].shape).astype(np.float32)} for k, v in params["lora"].items()}
    return params


def test_rules_select_kernels_and_unknown_rules_list_candidates():
    params = init_params(CFG, jax.random.key(0))
    assert Lora(4).paths(params) == ["h_0/attn/q_proj/kernel", "h_0/attn/v_proj/kernel",
                                     "h_1/attn/q_proj/kernel", "h_1/attn/v_proj/kernel"]
    assert len(Lora(4, targets=[r"mlp/c_fc/kernel", r"h_1/attn/out_proj"]).paths(params)) == 3
    with pytest.raises(ValueError, match=r"select no 2-D weight; candidates: .*h_\*/attn/q_proj/kernel"):
        Lora(4, targets=["attention/query"]).paths(params)


@pytest.mark.slow
def test_merged_forward_equals_base_plus_low_rank_path():
    lora = Lora(rank=3, alpha=6.0)
    params = _random_adapters(lora.attach(init_params(CFG, jax.random.key(0)), jax.random.key(1)))
    merged = merge(params)
    a, b = (np.asarray(params["lora"]["h_0/attn/q_proj/kernel"][k], np.float64) for k in "ab")
    w = np.asarray(params["base"]["h_0"]["attn"]["q_proj"]["kernel"], np.float64)
    np.testing.assert_allclose(np.asarray(merged["h_0"]["attn"]["q_proj"]["kernel"]), w + 2.0 * a @ b, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(merged["h_0"]["attn"]["k_proj"]["kernel"]),
                                  np.asarray(params["base"]["h_0"]["attn"]["k_proj"]["kernel"]))
    # In the forward pass: q = x W + scale (x A) B on the layer's real input, in float64.
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 10))
    _, state = GPTNeo(CFG).apply({"params": merged}, tokens, mutable=["intermediates"],
                                 capture_intermediates=lambda m, _: m.name in ("ln_1", "q_proj"))
    inter = state["intermediates"]["h_0"]
    x = np.asarray(inter["ln_1"]["__call__"][0], np.float64)
    q = np.asarray(inter["attn"]["q_proj"]["__call__"][0])
    np.testing.assert_allclose(q, x @ w + 2.0 * (x @ a) @ b, atol=1e-4)


@pytest.mark.slow
def test_training_freezes_the_base_and_keeps_no_optimizer_state_for_it(tiny_hf_with_tokenizer, tmp_path):
    from neojax import checkpoint
    from neojax.train.config import base_config
    from neojax.train.loop import train
    c = base_config()
    c.model.preset, c.model.init_from = "", tiny_hf_with_tokenizer
    c.data.source_args = dict(max_bytes=200_000)
    c.data.seq_len = 32
    c.lora.rank = 4
    c.optimizer.update(lr=1e-2, warmup_steps=1)
    c.train.update(total_steps=8, global_batch=8, log_every=4, report_mfu=False)
    c.checkpoint.every_steps = 8
    c.eval.update(every_steps=8, valid_batches=2)
    result = train(c, str(tmp_path / "run"))
    state = result["state"]
    base = checkpoint.load(tiny_hf_with_tokenizer).params
    for ours, theirs in zip(jax.tree.leaves(state.params["base"]), jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(ours), theirs)  # bit-identical
    assert any(float(jnp.abs(ab["b"]).max()) > 0 for ab in state.params["lora"].values())  # adapters trained
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state) if x.ndim)
    adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params["lora"]))
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
    print(f"optimizer state {opt_bytes} bytes = 2 x adapters {adapter_bytes}; base {base_bytes} bytes")
    assert opt_bytes == 2 * adapter_bytes < base_bytes // 10
    # The workdir loads merged; the adapters directory alone rebuilds the same model on the base.
    merged = merge(jax.device_get(state.params))
    loaded = checkpoint.load(str(tmp_path / "run")).params
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(merged)):
        np.testing.assert_array_equal(x, np.asarray(y))
    again, lora = load_adapters(str(tmp_path / "run" / "adapters"), base)
    assert lora == Lora(4, 16.0, (r"attn/(q|v)_proj/kernel",))
    for x, y in zip(jax.tree.leaves(merge(again)), jax.tree.leaves(merged)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_adapters_for_another_model_are_rejected(tmp_path):
    lora = Lora(2)
    params = lora.attach(init_params(CFG, jax.random.key(0)), jax.random.key(1))
    save_adapters(str(tmp_path / "a"), params, lora)
    other = init_params(CFG.replace(hidden_size=16, num_heads=2), jax.random.key(0))
    with pytest.raises(ValueError, match="trained on another model"):
        load_adapters(str(tmp_path / "a"), other)
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter directory"):
        load_adapters(str(tmp_path), other)


@pytest.mark.slow
def test_plan_reports_lora_memory_for_1p3b_without_allocating():
    full = sharding.plan(preset("gpt-neo-1.3B"), "data=1,fsdp=1,tensor=1", num_devices=1)
    low = sharding.plan(preset("gpt-neo-1.3B"), "data=1,fsdp=1,tensor=1", num_devices=1, lora=Lora(8))
    # q and v of 24 layers: 2 * 24 * 8 * (2048 + 2048) trained parameters.
    assert low["trained_params"] == 2 * 24 * 8 * 4096
    assert low["optimizer_per_device"] == 2 * 4 * low["trained_params"]
    assert full["optimizer_per_device"] == 2 * full["params_per_device"]
    assert low["total_per_device"] < 0.34 * full["total_per_device"]
