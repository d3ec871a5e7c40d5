"""An evaluation task, declared once: one `Task` record says how to read and check its records,
where its public release is (`--prepare`), which TFDS dataset holds the same records, whether it
takes few-shot examples, what kind of scoring it does, its paper-table columns, and the function
that scores it. `multiple_choice_task` builds the query + choices + gold tasks.

    multiple_choice_task(
        "piqa", query=lambda d: f"Question: {d['goal']}\\nAnswer:", choices=lambda d: [d["sol1"], d["sol2"]],
        gold=lambda d: d["label"],
        format='{"goal", "sol1", "sol2", "label"}',
        check=rules(texts("goal", "sol1", "sol2"), choice_label("label", 2)),
        release=Release("baber/piqa", None, {"": "validation", "train": "train"},
                        keep("goal", "sol1", "sol2", "label")))

Records are local files in data_dir: `<file>.jsonl` (the evaluated split) and `<file>.train.jsonl`
(few-shot examples), in the public releases' field names; or, for tasks with `tfds`, a TFDS
dataset already prepared in tfds_data_dir. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import random
import sys
from typing import Callable, Iterator, Optional

import numpy as np

from neojax import paths, registry
from neojax.data.sources import tfds_records

KINDS = ("loglikelihood", "perplexity", "generation", "bias", "code")
FEWSHOT_SEED = 1234
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")  # a few made-up records per task

Check = Callable[[dict], Optional[str]]  # a record -> what is wrong with it, or None


@dataclasses.dataclass(frozen=True)
class Release:
    """Where `--prepare` finds a task's records: a Hugging Face hub dataset, its config, the split
    per role ("" evaluated, "train" few-shot) and a row -> record map (the documented fields)."""
    hub_id: str
    config: Optional[str]
    splits: dict
    record: Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class Tfds:
    """A prepared TFDS dataset holding the same records: its name, split per role, row -> record."""
    name: str
    splits: dict
    record: Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class Task:
    """run(scorer, docs, few-shot docs, num_fewshot) -> metrics, and everything else about the task.

    format: the record's fields, shown in every error about a record; check: record -> problem.
    kind: one of KINDS. zero_shot: why the task takes no few-shot examples ("" : it takes them from
    `<file>.train.jsonl`). file/select: a subset task reads another file's records that `select`
    keeps (one bias category). columns: paper-table column -> metric. requires: the optional
    packages its metrics need, checked before any work."""
    name: str
    run: Callable
    format: str
    check: Check
    kind: str = "loglikelihood"
    release: Optional[Release] = None
    tfds: Optional[Tfds] = None
    not_in_tfds: str = ""  # why TFDS's dataset of the same name cannot stand in
    zero_shot: str = ""
    file: str = ""
    select: Optional[Callable[[dict], bool]] = None
    columns: dict = dataclasses.field(default_factory=dict)
    requires: tuple = ()  # optional packages its metrics need: (module, what for, pip name), checked before work
    bundled: Optional[Callable[[], str]] = None  # the records file that ships with a package, when data_dir has none

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {KINDS}")

    @property
    def stem(self) -> str:
        """The name of its files: its own, or the file a subset task reads."""
        return self.file or self.name

    @property
    def generates(self) -> bool:
        """Whether it generates text (a "code" task executes what it generates)."""
        return self.kind in ("generation", "code")


def register(task: Task, replace: bool = False) -> Task:
    return registry.register("task", task.name, replace)(task)


def get(name: str) -> Task:
    return registry.get("task", name)


def names(kind: Optional[str] = None) -> list[str]:
    """Registered task names (of one kind)."""
    return [n for n in registry.names("task") if kind is None or get(n).kind == kind]


@dataclasses.dataclass(frozen=True)
class keep:  # noqa: N801  (used like a function: keep("goal", "label"))
    """A release row -> the record of these fields (equal when the fields are)."""
    fields: tuple

    def __init__(self, *fields: str):
        object.__setattr__(self, "fields", fields)

    def __call__(self, row: dict) -> dict:
        return {f: row[f] for f in self.fields}


# --- record checks: each takes a record and returns what is wrong with it, or None ----------------
def rules(*checks: Check) -> Check:
    """The first problem any of `checks` finds."""
    return lambda doc: next((problem for check in checks if (problem := check(doc))), None)


def strings(*fields: str) -> Check:
    """Each of `fields` is present and a string (possibly empty)."""
    def check(doc):
        for f in fields:
            if f not in doc:
                return f"field {f!r} is missing"
            if not isinstance(doc[f], str):
                return f"field {f!r} must be a string, not {type(doc[f]).__name__}"
        return None
    return check


def texts(*fields: str) -> Check:
    """Each of `fields` is present, a string, and not empty or blank."""
    def check(doc):
        for f in fields:
            if not isinstance(doc.get(f), str):
                return f"field {f!r} must be a string, not {json.dumps(doc.get(f))[:40]}"
            if not doc[f].strip():
                return f"field {f!r} is empty"
        return None
    return check


def one_of(field: str, values) -> Check:
    """`field` is one of `values` (strings compared exactly)."""
    values = list(values)
    return lambda doc: None if isinstance(doc.get(field), str) and doc[field] in values else (
        f"field {field!r} must be one of {', '.join(map(str, values))}; not {json.dumps(doc.get(field))[:40]}")


def choice_label(field: str, choices: int, meaning: str = "") -> Check:
    """`field` is an integer (not a boolean, not a string) in [0, choices)."""
    def check(doc):
        value = doc.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < choices:
            return f"field {field!r} must be an integer in [0, {choices}){meaning}, not {json.dumps(value)[:40]}"
        return None
    return check


def number(field: str, low: float, high: float, meaning: str = "") -> Check:
    """`field` is a finite number (not a boolean) in [low, high]."""
    def check(doc):
        value = doc.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                not low <= value <= high:
            return f"field {field!r} must be a number in [{low}, {high}]{meaning}, not {json.dumps(value)[:40]}"
        return None
    return check


# --- reading records ----------------------------------------------------------------------------
class EmptySubset(ValueError):
    """A subset task (one category) whose file holds no record of that subset."""


def _jsonl_path(data_dir: str, task: Task, split: str) -> str:
    return str(paths.path(data_dir) / f"{task.stem}{'.' + split if split else ''}.jsonl")


def available(name: str, data_dir: str, tfds_data_dir: Optional[str] = None) -> bool:
    """Whether the task's evaluated split is in data_dir (jsonl) or prepared in tfds_data_dir."""
    task = get(name)
    return paths.exists(_jsonl_path(data_dir, task, "")) or bool(
        tfds_data_dir and task.tfds and os.path.isdir(os.path.join(tfds_data_dir, task.tfds.name)))


def json_lines(path: str, expected: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of a UTF-8 JSON-lines file (gzipped if it ends in
    .gz). A line that is not JSON, or bytes that are not UTF-8, raise a ValueError naming the place
    and what a line should hold (`expected`)."""
    with paths.path(path).open("rb") as raw, io.TextIOWrapper(  # GzipFile leaves the file it reads open
            gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if n == 1 and line.startswith("\ufeff"):  # an editor's byte-order mark, not part of the record
                    line = line[1:]
                    print(f"note: {path} starts with a UTF-8 byte-order mark; it is skipped", file=sys.stderr)
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not valid JSON ({e.msg}); expected {expected}") from None
                yield n, value
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_docs(data_dir: str, name: str, split: str = "", tfds_data_dir: Optional[str] = None) -> list[dict]:
    """The task's records: data_dir/<file>[.split].jsonl, else (given tfds_data_dir) TFDS. Every
    record is checked (fields, types, label ranges): a bad one names the file and line."""
    task = get(name)
    path = _jsonl_path(data_dir, task, split)
    if not paths.exists(path) and task.bundled and not split:
        path = task.bundled()
    if not paths.exists(path):
        if tfds_data_dir and task.tfds:
            source = task.tfds
            docs = [source.record(r) for r in tfds_records(source.name, source.splits[split], tfds_data_dir)]
            for i, doc in enumerate(docs):
                _check_doc(task, doc, f"TFDS {source.name} split {source.splits[split]} record {i}")
            if not docs:
                raise ValueError(f"{name}: TFDS {source.name} split {source.splits[split]} in {tfds_data_dir} "
                                 "has no records")
            return docs
        hint = (f", or pass --tfds_data_dir where TFDS {task.tfds.name!r} is prepared" if task.tfds else
                f" ({task.not_in_tfds})" if task.not_in_tfds else "")
        raise FileNotFoundError(f"{name}: expected {path}, one JSON object per line: {task.format}{hint}")
    if paths.is_dir(path):
        raise ValueError(f"{name}: {path} is a directory; expected a JSON-lines file")
    return read_docs(path, task)


def read_docs(path: str, task: Task) -> list[dict]:
    """The task's records in one JSON-lines file (gzipped if it ends in .gz), each checked."""
    docs = []
    for n, doc in json_lines(path, task.format):
        _check_doc(task, doc, f"{path} line {n}")
        docs.append(doc)
    if not docs:
        raise ValueError(f"{path} holds no records; expected one JSON object per line: {task.format}")
    if task.select is not None:
        docs = [d for d in docs if task.select(d)]
        if not docs:
            raise EmptySubset(f"{task.name}: no record of {path} belongs to this subset")
    return docs


def _lone_surrogate(value) -> Optional[str]:
    """The first string in a record that is not Unicode text (JSON may escape a lone surrogate, "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return e.object[e.start:e.end]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((bad for item in items if (bad := _lone_surrogate(item)) is not None), None)


def _check_doc(task: Task, doc, where: str) -> None:
    problem = f"a {type(doc).__name__}, not a JSON object" if not isinstance(doc, dict) else task.check(doc)
    if problem is None and (bad := _lone_surrogate(doc)) is not None:
        problem = f"holds {bad!r}, a lone surrogate (not a character); write valid Unicode text"
    if problem:
        raise ValueError(f"{where}: {problem} (a {task.name} record is {task.format})")


# --- scoring shared by tasks --------------------------------------------------------------------
def mean_stderr(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def fewshot_prefix(train_docs, n: int, rnd: random.Random, render: Callable[[dict], str], exclude=None) -> str:
    if n == 0:
        return ""
    pool = [d for d in train_docs if d is not exclude]
    if len(pool) < n:
        raise ValueError(f"num_fewshot={n} but only {len(pool)} training examples are available")
    return "".join(render(d) + "\n\n" for d in rnd.sample(pool, n))


def multiple_choice(scorer, contexts, choices, golds):
    """acc (argmax ll) and acc_norm (argmax ll / characters of the choice), as the harness."""
    pairs = [(c, " " + ch) for c, chs in zip(contexts, choices) for ch in chs]
    lls = iter(r[0] for r in scorer.loglikelihood(pairs))
    acc, acc_norm = [], []
    for chs, gold in zip(choices, golds):
        ll = np.array([next(lls) for _ in chs])
        acc.append(float(np.argmax(ll) == gold))
        acc_norm.append(float(np.argmax(ll / np.array([len(c) for c in chs])) == gold))
    (a, ase), (n, nse) = mean_stderr(acc), mean_stderr(acc_norm)
    return {"acc": a, "acc_stderr": ase, "acc_norm": n, "acc_norm_stderr": nse}


def multiple_choice_task(name: str, *, query: Callable[[dict], str], choices: Callable[[dict], list[str]],
                         gold: Callable[[dict], int], metrics=("acc", "acc_norm"), replace: bool = False,
                         **declaration) -> Task:
    """Register a query + choices + gold task (the harness's multiple_choice): each choice scored
    as " " + choice after the query, a few-shot example rendered as query + " " + its gold choice;
    `metrics` of acc and acc_norm (with their stderr) reported. `declaration`: Task's other fields."""
    check = declaration.pop("check", lambda doc: None)

    def no_empty_choice(doc):  # an empty choice has no tokens: its log-likelihood 0 would win every time
        if problem := check(doc):
            return problem
        empty = [i for i, c in enumerate(choices(doc)) if not str(c).strip()]
        return f"answer choice {empty[0]} is empty; give every choice some text" if empty else None

    def run(scorer, docs, train_docs, num_fewshot=0):
        rnd = random.Random(FEWSHOT_SEED)
        render = lambda d: query(d) + " " + choices(d)[gold(d)]
        contexts = [fewshot_prefix(train_docs, num_fewshot, rnd, render, d) + query(d) for d in docs]
        scores = multiple_choice(scorer, contexts, [choices(d) for d in docs], [gold(d) for d in docs])
        return {k: v for k, v in scores.items() if k.removesuffix("_stderr") in metrics}
    return register(Task(name, run, check=no_empty_choice, **declaration), replace)
