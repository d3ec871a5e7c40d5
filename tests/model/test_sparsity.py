"""Pruning reaches the requested sparsity exactly per method, 2:4 keeps its pattern, and pruned
fine-tuning keeps the zeros."""
import subprocess
import sys

import jax
import numpy as np
import pytest
from support import device_env, exit_of

from neojax.evaluate.task import SAMPLES
from neojax.model import GPTNeoConfig, init_params
from neojax.model.sparsity import apply_masks, is_two_four, magnitude_masks, prunable, sparsity, two_four_masks
from neojax.prune import prune

CFG = GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, window_size=8,
                   attention_types=[[["global", "local"], 1]], max_position_embeddings=32)


@pytest.fixture(scope="module")
def params():
    return jax.device_get(init_params(CFG, jax.random.key(0)))


def _kernels(p):
    return {k: v for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}


def test_magnitude_global_and_per_layer_are_exact(params):
    total = sum(np.asarray(w).size for path, w in _flat(params).items() if prunable(path))
    for s in (0.0, 0.3, 0.5, 0.77):
        pruned = apply_masks(params, magnitude_masks(params, s))
        assert sparsity(pruned) == round(s * total) / total
        per_layer = apply_masks(params, magnitude_masks(params, s, scope="layer"))
        for path, w in _flat(per_layer).items():
            if prunable(path):
                assert (w == 0).sum() == round(s * w.size)
    # the kept weights are the largest: every kept |w| >= every pruned |w| (global)
    masks = magnitude_masks(params, 0.5)
    kept = np.concatenate([np.abs(np.asarray(_flat(params)[p]))[m] for p, m in masks.items()])
    dropped = np.concatenate([np.abs(np.asarray(_flat(params)[p]))[~m] for p, m in masks.items()])
    assert kept.min() >= dropped.max()
    untouched = [p for p in _flat(params) if not prunable(p)]
    for p in untouched:  # embeddings, norms, biases
        np.testing.assert_array_equal(_flat(pruned)[p], _flat(params)[p])


def test_two_four_pattern(params):
    pruned = apply_masks(params, two_four_masks(params))
    assert sparsity(pruned) == 0.5 and is_two_four(pruned) and not is_two_four(params)
    w = np.asarray(_flat(params)[("h_0", "mlp", "c_fc", "kernel")])
    got = np.asarray(_flat(pruned)[("h_0", "mlp", "c_fc", "kernel")])
    for col in range(3):
        for g in range(0, 8, 4):
            group = np.abs(w[g:g + 4, col])
            assert set(np.nonzero(got[g:g + 4, col])[0]) == set(np.argsort(group)[2:])


def test_bad_pruning_requests(params):
    with pytest.raises(ValueError, match="sparsity=1.0"):
        magnitude_masks(params, 1.0)
    with pytest.raises(ValueError, match="2:4 is 50% sparse"):
        prune(params, "2:4", 0.3)
    with pytest.raises(ValueError, match="method='random'"):
        prune(params, "random", 0.3)
    odd = {"h_0": {"mlp": {"c_fc": {"kernel": np.ones((6, 4), np.float32)}}}}
    with pytest.raises(ValueError, match="multiple of 4 inputs; h_0/mlp/c_fc/kernel has 6"):
        two_four_masks(odd)


@pytest.mark.slow
def test_keep_zeros_training_keeps_the_masks(params):
    import optax

    from neojax.train.step import init_state, make_train_step
    pruned = prune(params, "magnitude", 0.6)
    state = init_state(CFG, optax.adamw(1e-2, weight_decay=0.1), jax.random.key(0), pruned)
    step = make_train_step(CFG, optax.adamw(1e-2, weight_decay=0.1), keep_zeros=True)
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 17))
    for _ in range(3):
        state, _ = step(state, tokens)
    after = jax.device_get(state.params)
    for path, w in _flat(pruned).items():
        if prunable(path):
            new = np.asarray(_flat(after)[path])
            assert (new[np.asarray(w) == 0] == 0).all() and (new != np.asarray(w)).any()
    free = make_train_step(CFG, optax.adamw(1e-2, weight_decay=0.1))
    state2, _ = free(init_state(CFG, optax.adamw(1e-2, weight_decay=0.1), jax.random.key(0), pruned), tokens)
    assert sparsity(jax.device_get(state2.params)) < 0.1  # without keep_zeros the zeros fill in


def _flat(tree):
    import flax
    return flax.traverse_util.flatten_dict(tree)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "neojax.prune", *args], capture_output=True, text=True,
                          timeout=600, env=device_env(1))


@pytest.mark.slow
def test_prune_command_and_report(tiny_hf_with_tokenizer, tmp_path, monkeypatch, capsys):
    from neojax import checkpoint, prune
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pruned"
    r = _run("--checkpoint", tiny_hf_with_tokenizer, "--method", "2:4", "--output", str(out))
    assert r.returncode == 0 and "50.00%" in r.stdout, r.stderr
    assert is_two_four(checkpoint.load(str(out)).params)
    for args, message in ((["--method", "random", "--output", "x"], "--method random"),
                          (["--method", "magnitude", "--sparsity", "1.0", "--output", "x"], "[0, 1)"),
                          (["--method", "magnitude", "--sparsity", "nan", "--output", "x"], "[0, 1)"),
                          (["--method", "2:4", "--sparsity", "0.3", "--output", "x"], "50% sparse"),
                          (["--method", "2:4", "--output", str(out)], "already exists"),
                          (["--report", "r.json", "--output", "x", "--text_files", "t"], "drop --output"),
                          (["--method", "2:4", "--output", "y", "--text_files", "t"], "--text_files: options of "
                                                                                      "--report"),
                          (["--method", "2:4", "--scope", "layer", "--output", "y"], "--scope ranks")):
        code, err = exit_of(prune.main, ["--checkpoint", tiny_hf_with_tokenizer, *args], capsys)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    text = tmp_path / "valid.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Once upon a time there was a model.\n" * 4)
    report = tmp_path / "report.json"
    r = _run("--checkpoint", tiny_hf_with_tokenizer, "--report", str(report), "--text_files", str(text),
             "--sparsities", "0.3,0.6")
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    rows = {row["variant"]: row for row in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"float32", "int8 weights", "int8 KV cache", "magnitude 30%", "magnitude 60%", "2:4"}
    assert rows["int8 weights"]["bytes_vs_float32"] < 0.5 and rows["float32"]["perplexity_change"] == 0
    assert rows["magnitude 60%"]["perplexity"] != rows["float32"]["perplexity"]
    assert rows["int8 KV cache"]["cached_perplexity"] != rows["float32"]["cached_perplexity"]  # the cache is measured
    assert rows["int8 KV cache"]["perplexity"] == rows["float32"]["perplexity"]  # full-sequence scoring has no cache
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def _report_rows(path):
    import json
    return {row["variant"]: row for row in json.loads(path.read_text())["rows"]}


def _same_rows(got, want):
    assert set(got) == set(want)
    for variant, row in want.items():
        for key, value in row.items():
            assert got[variant][key] == pytest.approx(value, rel=2e-5, abs=1e-6), (variant, key, got[variant][key])


@pytest.fixture(scope="module")
def one_device_report(tiny_hf_with_tokenizer, tmp_path_factory):
    """(the report's command-line arguments, the rows of its single-device report)."""
    text = tmp_path_factory.mktemp("report") / "valid.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Once upon a time there was a model.\n" * 4)
    argv = ["--checkpoint", tiny_hf_with_tokenizer, "--text_files", str(text), "--sparsities", "0.5", "--tasks",
            "piqa", "--data_dir", SAMPLES]
    r = _run(*argv, "--report", str(text.parent / "one.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    return argv, _report_rows(text.parent / "one.json")


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_the_report_on_a_mesh_equals_one_device(one_device_report, tmp_path, processes):
    """Every variant scored with heads split over tensor and rows over data (8 simulated devices), or
    by 2 real processes (2 devices each): the single-device report."""
    import support
    argv, want = one_device_report
    command = [sys.executable, "-m", "neojax.prune", *argv, "--report", str(tmp_path / "mesh.json")]
    if processes == 1:
        procs = [subprocess.Popen(command + ["--mesh", "data=2,tensor=4"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=device_env(8))]
    else:
        procs = support.processes("neojax.prune", command[3:])
    outs = support.finish(procs)
    assert [p.returncode for p in procs] == [0] * processes, outs[0][1][-2000:]
    _same_rows(_report_rows(tmp_path / "mesh.json"), want)
    if processes == 2:  # process 0 alone prints
        assert support.printed(outs[1][0]) == []
