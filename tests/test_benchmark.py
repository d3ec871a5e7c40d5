"""The benchmark's FLOPs count (checked against an independent count) and a run of the module on a
tiny shape: rows, ratios against transformers, JSON output. Timings themselves are not tested."""
import json

import jax
import numpy as np
import pytest

from neojax import benchmark
from neojax.flops import attention_flops_per_token, matmul_params, train_flops_per_token
from neojax.model import init_params, preset


def test_flops_count_matmul_weights_and_the_attention_the_layers_need():
    cfg = preset("tiny")  # global then local, window 32
    t = 128
    params = init_params(cfg, jax.random.key(0))
    # Every 2-D weight takes part in a matmul except the position table; wte is the tied head.
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    weights = sum(x.size for path, x in leaves if x.ndim == 2 and "wpe" not in jax.tree_util.keystr(path))
    assert matmul_params(cfg) == weights
    # Attention: 2 FLOPs per (query, key, feature) for q.k and again for p.v, over visible pairs.
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = {"global": (j <= i).sum(), "local": ((j <= i) & (j > i - cfg.window_size)).sum()}
    expected = sum(4 * visible[kind] * cfg.hidden_size for kind in cfg.attention_layers) / t
    np.testing.assert_allclose(attention_flops_per_token(cfg, t), expected, rtol=2 / t)  # the count drops diagonals
    assert train_flops_per_token(cfg, t) == pytest.approx(3 * (2 * weights + attention_flops_per_token(cfg, t)))


def test_benchmark_prints_and_writes_rows_with_transformers_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(["--presets", "tiny", "--seq_len", "64", "--train_batch", "2", "--only", "train,memory,eval",
                    "--output", str(out)])
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(report) == {"date", "device", "machine", "rows"}
    train = rows["train tiny T=64 batch 2 float32 remat=none"]
    assert train["unit"] == "tokens/s" and train["neojax"] > 0 and train["transformers"] > 0
    assert train["ratio"] == pytest.approx(train["neojax"] / train["transformers"])
    assert 0 < rows["train tiny T=64 batch 2 float32 remat=none MFU (6N + attention FLOPs / measured peak)"]["neojax"]
    memory = [rows[f"train step peak memory tiny T=64 batch 2 remat={r}"]["neojax"] for r in ("none", "dots", "full")]
    state_mb = 3 * sum(x.size * 4 for x in jax.tree.leaves(init_params(preset("tiny"), jax.random.key(0)))) / 1e6
    logits_mb = 2 * 64 * 512 * 4 / 1e6
    assert all(m > state_mb + logits_mb for m in memory)  # parameters, Adam's moments and the step's temporaries
    for name in ("evaluate lambada_openai tiny float32 (batch 8)", "evaluate wikitext tiny float32 (rolling windows)",
                 "tokenizer: byte-level BPE, encode_batch"):
        assert rows[name]["neojax"] > 0 and rows[name]["transformers"] is None
    assert "train tiny T=64 batch 2" in capsys.readouterr().out
