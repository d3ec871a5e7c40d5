"""The schema of a training config, written once: every key's default, what it means and its check.

`defaults()` builds the config an experiment starts from; `problems(config)` checks every key
against the same declarations. A check takes a value and returns what is wrong with it, or None;
the shared ones (integer, number, choice, ...) are below. Problems name their key without a
prefix (`train.total_steps=0: must be an integer >= 1`); the command line words them as
`--config.train.total_steps=0` (ConfigError.for_flags).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
from typing import Any, Callable, Optional

from neojax import registry, sharding
from neojax.errors import UsageError
from neojax.model.config import DTYPES, REMATS, is_int, is_number
from neojax.model.lora import DEFAULT_TARGETS

Check = Callable[[Any], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Field:
    default: Any
    check: Optional[Check] = None
    doc: str = ""


class ConfigError(UsageError):
    """Problems of a config, one line each: (key, value or None, what is wrong and the fix)."""

    def __init__(self, problems: list[tuple[str, Any, str]]):
        self.problems = problems
        super().__init__(self.lines("config."))

    def lines(self, prefix: str) -> str:
        show = lambda key, value: f"{prefix}{key}" + ("" if value is None else f"={json.dumps(value, default=str)}")
        return "\n".join(f"{show(key, value)}: {what}" for key, value, what in self.problems)

    def for_flags(self) -> UsageError:
        """The same problems worded as the command line's --config.key=value flags."""
        return UsageError(self.lines("--config."))


# --- shared checks ------------------------------------------------------------------------------
def integer(low: int) -> Check:
    what = "must be an integer >= 1" if low == 1 else f"must be an integer >= {low}" + (" (0 = off / default)"
                                                                                         if low == 0 else "")
    return lambda v: None if is_int(v) and v >= low else what


def number(low: float = -math.inf, high: float = math.inf, *, above: bool = False, below: bool = False,
           note: str = "") -> Check:
    """A finite number (not a boolean) in [low, high]; `above`/`below`: the bound itself excluded."""
    def check(v):
        ok = is_number(v) and (v > low if above else v >= low) and (v < high if below else v <= high)
        if ok:
            return None
        if high == math.inf:
            return f"must be a finite number {'>' if above else '>='} {low:g}{note}"
        return f"must be a number in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}{note}"
    return check


def choice(*values) -> Check:
    names = ", ".join(repr(v) for v in values[:-1]) + f" or {values[-1]!r}" if len(values) > 1 else repr(values[0])
    return lambda v: None if v in values else f"choose {names}"


def boolean(v) -> Optional[str]:
    return None if isinstance(v, bool) else "must be true or false"


def registered(kind: str, *extra: str, also: tuple = ()) -> Check:
    """A name registered as `kind` (or as one of the kinds `also`, or one of `extra`)."""
    def check(name):
        known = sorted(set(registry.names(kind)).union(extra, *(registry.names(k) for k in also)))
        if name in known:
            return None
        close = difflib.get_close_matches(str(name), known, n=1)
        return f"unknown {kind}{f' (did you mean {close[0]!r}?)' if close else ''}; registered: {known}"
    return check


def names_of(kind: str) -> Check:
    """A list of names registered as `kind`."""
    one = registered(kind)

    def check(value):
        if not isinstance(value, (list, tuple)):
            return f"must be a list of names, e.g. '[\"{(registry.names(kind) or ['name'])[0]}\"]'"
        return next((f"{name!r}: {problem}" for name in value if (problem := one(name))), None)
    return check


def regexes(value) -> Optional[str]:
    for pattern in value or []:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as err:
            return f"{pattern!r} is not a regular expression ({err})"
    return None


def profile_steps(value) -> Optional[str]:
    """"" or "START:END", steps 0 < START < END."""
    if value == "":
        return None
    start, sep, end = str(value).partition(":")
    if sep and start.isdigit() and end.isdigit() and 0 < int(start) < int(end):
        return None
    return 'must be "" (none) or "START:END", steps with 0 < START < END (e.g. "100:110")'


def mesh(value) -> Optional[str]:
    if not isinstance(value, str):
        return "must be axis sizes such as 'data=-1,fsdp=1,tensor=1'"
    try:
        sharding.parse_mesh(value)
    except ValueError as err:
        return str(err)
    return None


# --- the schema ---------------------------------------------------------------------------------
SCHEMA = {
    "objective": Field("lm", registered("objective"), "what the loop trains: lm | distill | classify"),
    "model": {
        "preset": Field("tiny", None, "a neojax.model preset, or '' when init_from gives the model"),
        "init_from": Field("", None, "HF / neojax checkpoint to start from (fine-tuning)"),
        "overrides": Field({}, None, "GPTNeoConfig fields changed on top of the preset"),
        "dtype": Field("float32", choice(*DTYPES), "activations; params stay float32"),
        "remat": Field("none", choice(*REMATS), "rematerialisation of each block"),
    },
    "data": {
        "source": Field("stdlib", registered("data_source", "mixture", also=("batch_source",)),
                        "a registered data_source or batch_source (chat), or 'mixture'"),
        "source_args": Field({}, None, "options of that source"),
        "mixture": Field([], None, "for source='mixture': [{source, source_args, weight}]"),
        "tokenizer": Field("", None, "a tokenizer file/dir; '' = the checkpoint's, or train_sentencepiece"),
        "train_sentencepiece": Field(0, integer(0), "> 0: train a sentencepiece model of this vocab on the source"),
        "seq_len": Field(128, integer(1), "tokens per training example"),
        "valid_fraction": Field(0.01, number(0, 1, below=True), "documents held out for valid_loss"),
        "on_error": Field("raise", choice("raise", "skip"), "raise | skip bad records"),
        "transform": Field("", lambda v: None if v == "" else registered("data_transform")(v),
                           "a registered data_transform applied to every document (e.g. counterfactual), or ''"),
        "transform_args": Field({}, None, "options of that transform (counterfactual: pairs=PATH)"),
        "transform_mode": Field("also", choice("also", "instead"),
                                "also: each document and its transformed copy; instead: the copies only"),
        "cache_dir": Field("", None, "default: WORKDIR/data_cache"),
        "seed": Field(0, integer(0), "the held-out split and the order of batches"),
    },
    "optimizer": {
        "schedule": Field("cosine", registered("schedule"), "learning-rate schedule: cosine | linear | constant"),
        "lr": Field(3e-4, number(0, above=True, note=" (the learning rate)"), "peak learning rate (AdamW)"),
        "warmup_steps": Field(100, integer(0), "linear warm-up from 0"),
        "decay_steps": Field(0, integer(0), "steps of decay after warm-up (0 = train.total_steps)"),
        "final_lr_ratio": Field(0.1, number(0, 1), "the rate at the end of decay, as a fraction of lr"),
        "b1": Field(0.9, number(0, 1, below=True), "Adam's first-moment decay"),
        "b2": Field(0.95, number(0, 1, below=True), "Adam's second-moment decay"),
        "eps": Field(1e-8, number(0, above=True), "Adam's epsilon"),
        "weight_decay": Field(0.1, number(0, note=" (0 = off)"), "decoupled (AdamW)"),
        "clip": Field(1.0, number(0, note=" (0 = off)"), "global gradient-norm clipping"),
    },
    "lora": {
        "rank": Field(0, integer(0), "> 0: train LoRA adapters of this rank; the base stays frozen"),
        "alpha": Field(16.0, number(0, above=True), "adapter scale = alpha / rank"),
        "targets": Field(list(DEFAULT_TARGETS), regexes, "regexes over parameter paths (h_0/attn/q_proj/kernel)"),
    },
    "distill": {
        "teacher": Field("", None, "a checkpoint (HF / neojax / workdir): distil its predictions"),
        "temperature": Field(2.0, number(0, above=True), "softening of both distributions"),
        "alpha": Field(0.5, number(0, 1), "weight of T^2 * KL(teacher || student) against the LM loss"),
    },
    "classify": {
        "train": Field("", None, "jsonl of {text, label}, or tfds:NAME"),
        "valid": Field("", None, "the same for validation ('' = none)"),
        "train_split": Field("train", None, "TFDS split of `train`"),
        "valid_split": Field("validation", None, "TFDS split of `valid`"),
        "tfds_data_dir": Field("", None, "where TFDS datasets are prepared"),
        "text_field": Field("text", None, "the field holding the text"),
        "label_field": Field("label", None, "the field holding the label"),
        "labels": Field([], None, "[] = the sorted labels of the training data"),
    },
    "train": {
        "total_steps": Field(1000, integer(1), "optimizer steps of the run"),
        "global_batch": Field(16, integer(1), "examples a step, over all devices and processes"),
        "microbatches": Field(1, integer(1), "gradient accumulation: the batch in this many slices"),
        "z_loss": Field(0.0, number(0, note=" (0 = off)"), "weight of PaLM's log-partition penalty"),
        "seed": Field(0, integer(0), "parameter init and dropout"),
        "max_nonfinite_streak": Field(10, integer(1), "consecutive NaN/Inf steps that end the run"),
        "log_every": Field(10, integer(1), "steps between log lines (the only read-backs)"),
        "report_mfu": Field(True, boolean, "measure the matmul peak at start and log MFU"),
        "keep_zeros": Field(False, boolean, "pruned fine-tuning: block kernels' zero weights stay exactly zero"),
    },
    "checkpoint": {
        "every_steps": Field(200, integer(1), "steps between saves (and at the end, and on SIGTERM)"),
        "keep": Field(3, integer(1), "newest checkpoints kept"),
        "keep_period": Field(0, integer(0), "also keep every step divisible by this (0 = none)"),
        "async_save": Field(True, boolean, "write checkpoints while training goes on"),
    },
    "eval": {
        "every_steps": Field(200, integer(0), "steps between evaluation hooks (0 = never)"),
        "valid_batches": Field(8, integer(1), "batches the valid_loss hook scores"),
        "hooks": Field(["valid_loss"], names_of("eval"), "registered evaluation hooks run every eval.every_steps"),
        "sample_prompts": Field([], None, "for the 'samples' hook"),
        "sample_max_new_tokens": Field(48, integer(1), "for the 'samples' hook"),
        "sample_temperature": Field(0.8, number(0, note=" (0 = greedy)"), "sampled, as people read"),
        "sample_top_p": Field(0.95, number(0, 1, above=True, note=" (1 = off)"), "for the 'samples' hook"),
        "tasks": Field([], names_of("task"), "for the 'tasks' hook"),
        "task_data_dir": Field("", None, "task files for the 'tasks' and 'bias_report' hooks"),
        "task_limit": Field(0, integer(0), "records per task (0 = all)"),
        "num_fewshot": Field(0, integer(0), "few-shot examples for the 'tasks' hook"),
    },
    "profile": {
        "steps": Field("", profile_steps, "steps START:END traced with jax.profiler on every host into "
                       "WORKDIR/profile/host-N/ (\"\" = none; a running run: write START:END into "
                       "WORKDIR/profile/REQUEST)"),
    },
    "watchdog": {
        "factor": Field(10.0, number(0, note=" (0 = off)"), "a step slower than this many times the recent median "
                        "dumps every host's Python stacks into the log and WORKDIR/hangs/"),
        "min_s": Field(60.0, number(0), "and slower than this many seconds"),
    },
    "mesh": Field("data=-1,fsdp=1,tensor=1", mesh, "device mesh axis sizes (-1: the rest)"),
    "sharding_rules": Field((), None, "empty = neojax.sharding.DEFAULT_RULES"),
}


def defaults(schema: dict = SCHEMA) -> dict:
    """A fresh nested dict of every default (lists and dicts copied: configs never share them)."""
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def fields(schema: dict = SCHEMA, prefix: str = ""):
    """(dotted key, Field) of every declared key."""
    for k, v in schema.items():
        if isinstance(v, dict):
            yield from fields(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


_MISSING = object()


def problems(config: dict) -> list[tuple[str, Any, str]]:
    """(key, value, problem) for every declared key whose value fails its check."""
    out = []
    for key, field in fields():
        node = config
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING and field.check is not None and (problem := field.check(node)):
            out.append((key, node, problem))
    return out

