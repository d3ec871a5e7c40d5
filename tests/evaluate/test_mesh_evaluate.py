"""Evaluation on a mesh (8 simulated devices, and 2 real processes): every task family gives the
single-device numbers (log-likelihoods to float32 rounding, accuracies and generated text exactly),
and a mesh that cannot split the model or the batch is one line before any weight is read."""
import json
import math
import shutil
import subprocess
import sys

import jax
import pytest
from support import device_env, exit_of, finish, printed, processes

from neojax import checkpoint, sharding
from neojax.evaluate import CodeSettings, evaluate
from neojax.evaluate.task import SAMPLES

# one task of each family: log-likelihood (and lambada's greedy match), rolling perplexity,
# generation (greedy until a stop string), the bias suites, and code (sampled, then executed)
TASKS = ["piqa", "lambada_openai", "wikitext", "wmt16-de-en", "crows_pairs_english", "bbq", "humaneval"]
SAMPLED = CodeSettings(num_samples=2, temperature=0.8, top_p=0.95, seed=3)


def assert_same(got: dict, want: dict, where: str) -> None:
    for task, metrics in want.items():
        for key, value in metrics.items():
            if key == "seconds":
                continue
            other = got[task][key]
            if isinstance(value, float) and not math.isnan(value):
                assert other == pytest.approx(value, rel=2e-5, abs=1e-6), (where, task, key, other, value)
            else:
                assert other == value or (value != value and other != other), (where, task, key, other, value)


@pytest.fixture(scope="module")
def model(tiny_hf_with_tokenizer):
    return checkpoint.load(tiny_hf_with_tokenizer)


@pytest.fixture(scope="module")
def single(model):
    return evaluate(model.params, model.config, model.tokenizer, TASKS, SAMPLES, max_gen_toks=16, code=SAMPLED)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data=8", "data=2,tensor=4", "fsdp=2,tensor=2,data=2"])
def test_every_task_family_equals_one_device(mesh, model, single):
    placed = sharding.place(model.params, model.config, sharding.make_mesh(mesh))
    assert sharding.mesh_of(placed) is not None
    wte = placed["wte"]
    assert len(wte.sharding.device_set) == 8
    split = sharding.data_parallel(sharding.mesh_of(placed))
    got = evaluate(placed, model.config, model.tokenizer, TASKS, SAMPLES, max_gen_toks=16, batch_size=2 * split,
                   code=SAMPLED)
    assert_same(got, single, mesh)
    assert all(got[t]["n"] == single[t]["n"] for t in TASKS)


@pytest.mark.slow
def test_int8_weights_place_their_scales_with_their_kernels(model):
    from neojax.model.quant import quantize_params
    params = jax.device_get(quantize_params(model.params))
    placed = sharding.place(params, model.config, sharding.make_mesh("data=2,tensor=4"))
    leaves = dict(jax.tree_util.tree_leaves_with_path(placed))
    specs = {jax.tree_util.keystr(k): v.sharding.spec for k, v in leaves.items()}
    scales = {k: s for k, s in specs.items() if k.endswith("['kernel_scale']")}
    assert scales and any("tensor" in str(s) for s in scales.values()), specs
    for name, spec in scales.items():  # a scale is split as its kernel's output dimension
        assert tuple(spec) == tuple(specs[name.replace("kernel_scale", "kernel")])[-1:], (name, spec)
    want = evaluate(params, model.config, model.tokenizer, ["piqa", "wikitext"], SAMPLES)
    assert_same(evaluate(placed, model.config, model.tokenizer, ["piqa", "wikitext"], SAMPLES, batch_size=4),
                want, "int8")


def run(argv, env_devices=8, **kwargs):
    env = device_env(env_devices)
    return subprocess.run([sys.executable, "-m", "neojax.evaluate", *argv], capture_output=True, text=True,
                          timeout=600, env=env, **kwargs)


@pytest.mark.slow
def test_a_mesh_that_does_not_split_the_model_or_batch_is_one_line_before_loading(tiny_hf_with_tokenizer, tmp_path,
                                                                                    capsys):
    from neojax.evaluate.__main__ import main  # in this process (its 8 devices): a refusal needs no process
    shapeless = tmp_path / "no_weights"  # the config says the shape; reading weights would fail
    shapeless.mkdir()
    shutil.copy(f"{tiny_hf_with_tokenizer}/config.json", shapeless)
    base = ["--checkpoint", str(shapeless), "--sample_tasks", "--tasks", "piqa"]
    for extra, words in ((["--mesh", "tensor=8"], "does not divide the model's 4 attention heads"),
                         (["--mesh", "data=4", "--batch_size", "6"], "does not divide --batch_size 6"),
                         (["--mesh", "data=16"], "needs 16 devices but 8 are present"),
                         (["--mesh", "rows=2"], "unknown mesh axes")):
        code, err = exit_of(main, base + extra, capsys)
        assert code == 2 and err.startswith("error: --mesh") and err.count("\n") == 1 and words in err, err


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tiny_hf_with_tokenizer, tmp_path):
    """2 processes of 2 devices each on a loopback coordinator against one process on 1 device: the
    same JSON; process 1 prints no result and writes nothing."""
    argv = ["--checkpoint", tiny_hf_with_tokenizer, "--sample_tasks", "--tasks", ",".join(TASKS), "--max_gen_toks",
            "16", "--allow_code_execution", "--num_samples", "2", "--temperature", "0.8", "--top_p", "0.95"]
    one = run(argv + ["--output", str(tmp_path / "one.json")], env_devices=1)
    assert one.returncode == 0, one.stderr[-2000:]
    procs = processes("neojax.evaluate", argv + ["--output", str(tmp_path / "two.json")])
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    want, got = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    records = [open(r[t].pop("records_file")).read() for r in (got, want) for t in ["humaneval"]]
    assert records[0] == records[1] and records[0].count("\n") == 6  # 3 problems x 2 samples, executed once
    assert_same({t: got[t] for t in TASKS}, {t: want[t] for t in TASKS}, "2 processes")
    assert "piqa" in outs[0][0] and "wrote" in outs[0][0]
    assert printed(outs[1][0]) == [] and "requests" not in outs[1][1]  # process 0 alone prints (progress too)
    assert "executing" in outs[0][1] and "executing" not in outs[1][1]  # and executes
    assert got["config"]["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
