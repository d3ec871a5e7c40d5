"""Training configs: experiments start from `base_config()` (every key the schema in
neojax.train.schema declares), change values and return it locked, so a typo (in a file or a
--config.key=value flag) names the valid keys. `check_config` validates a whole config before any
work; `config_changes` says what a resume would change."""
from __future__ import annotations

import ast
import difflib
import glob
import importlib.util
import inspect
import json
import os

import ml_collections

# Every component a config can name registers on import: attention variants, tasks, hooks, ...
import neojax.evaluate  # noqa: F401
import neojax.model  # noqa: F401
import neojax.train.hooks  # noqa: F401
import neojax.train.objectives  # noqa: F401
import neojax.train.optim  # noqa: F401
from neojax import paths, registry
from neojax.cli import UsageError
from neojax.data import transforms
from neojax.data.sources import expand_paths
from neojax.model.config import PRESETS, is_int, is_number, preset
from neojax.train import schema

EXPERIMENT_DIRS = [os.path.join(os.getcwd(), "experiments"),
                   os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "experiments")]


def base_config() -> ml_collections.ConfigDict:
    """Every key at its default (neojax.train.schema declares them, with what each means)."""
    return ml_collections.ConfigDict(schema.defaults())


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.lock()
    return c


def experiments() -> dict[str, str]:
    """name -> path of every experiment file (the registry of experiments)."""
    found = {}
    for directory in EXPERIMENT_DIRS:
        for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
            name = os.path.basename(path)[:-3]
            if not name.startswith("_"):
                found.setdefault(name, path)
    return found


def import_experiment(name_or_path: str):
    """The module of an experiment file by name (shared pieces such as `_pile` included) or path:
    how experiment files use each other, without sys.path edits."""
    path = name_or_path
    if not os.path.exists(path):
        found = [os.path.join(d, f"{name_or_path}.py") for d in EXPERIMENT_DIRS
                 if os.path.exists(os.path.join(d, f"{name_or_path}.py"))]
        if not found:
            raise ValueError(f"unknown experiment {name_or_path!r}; registered experiments: {sorted(experiments())} "
                             "(or give a path to a config file)")
        path = found[0]
    if not os.path.isfile(path):
        raise UsageError(f"--config {name_or_path}: {path} is not a file; give an experiment name or a config .py file")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"--config {path}: line {e.lineno}: {e.msg}") from None
    return module


def split_variant(spec: str) -> tuple[str, str]:
    """"name:variant" -> ("name", "variant"); the one parser of experiment strings."""
    name, _, variant = spec.partition(":")
    return name, variant


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """The config of "name[:variant]" or "path/to/file.py[:variant]", as --config reads it
    (for notebooks, scripts and experiments built on others)."""
    path, variant = split_variant(spec)
    module = import_experiment(path)
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"--config {path} defines no get_config(); an experiment file returns its config from "
                         "get_config(variant='')")
    config = module.get_config(variant) if variant else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"--config {path}: get_config() returned {type(config).__name__}, not a ConfigDict "
                         "(start from neojax.train.config.base_config())")
    return config


# --- --config.key=value overrides --------------------------------------------------------------------
FREE_FORM = ("model.overrides", "data.source_args", "data.transform_args")  # dicts whose keys the user chooses


def _literal(text: str):
    """JSON or a Python literal if `text` is one, else the text itself."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


def _coerce(key: str, current, text: str):
    """`text` as the type of the field's current value; a UsageError naming the key otherwise."""
    want = type(current).__name__
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
    elif isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            pass
    elif isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            pass
    elif isinstance(current, str):
        return text
    elif isinstance(current, (list, tuple)):
        value = _literal(text)
        if isinstance(value, str):  # a,b,c
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return type(current)(value) if isinstance(current, tuple) else list(value)
        want = "list"
    elif isinstance(current, (dict, ml_collections.ConfigDict)):
        value = _literal(text)
        if isinstance(value, dict):
            return value
        want = "dict (JSON, e.g. {\"key\": 1})"
    else:
        return _literal(text)
    raise UsageError(f"--config.{key}={text}: expected {'an' if want[0] in 'aeiou' else 'a'} {want}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Set each ("a.b.c", text) on `config`; an unknown key names the closest valid ones."""
    for key, text in overrides:
        parts = key.split(".")
        node, path = config, []
        for i, part in enumerate(parts):
            free = ".".join(path) in FREE_FORM
            last = i == len(parts) - 1
            if isinstance(node, ml_collections.ConfigDict) and part in node:
                if last:
                    current = node[part]
                    value = _literal(text) if free else _coerce(key, current, text)
                    with node.ignore_type():
                        node[part] = value
                else:
                    node = node[part]
                    path.append(part)
                continue
            if free and last and isinstance(node, ml_collections.ConfigDict):
                with node.unlocked():
                    node[part] = _literal(text)
                continue
            valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, valid, n=1)
            where = ".".join(path) or "config"
            hint = f"did you mean {'.'.join(path + close)}? " if close else ""
            raise UsageError(f"--config.{key}: {where} has no key {part!r}; {hint}valid keys: {valid}")
    return config


# --- validation --------------------------------------------------------------------------------------
def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v and not name.startswith(FREE_FORM):
            out.update(_flat(v, name + "."))
        else:
            out[name] = v
    return out


def check_config(config: ml_collections.ConfigDict) -> None:
    """Validate a whole training config before any work: every key against its declaration in the
    schema (types, ranges, registered names), then what keys say together, the model and paths.
    Raises a ConfigError with one line per problem, each naming the key and the fix."""
    c = config.to_dict()
    errors = schema.problems(c)
    flat = _flat(c)
    t, objective = c.get("train", {}), c.get("objective")
    teacher = c.get("distill", {}).get("teacher")
    if objective == "distill" and not teacher:
        errors.append(("objective", objective, "needs a teacher; set distill.teacher=CHECKPOINT"))
    elif teacher and objective != "distill":
        errors.append(("distill.teacher", teacher, "only the distill objective reads it; add objective=distill "
                       "(or drop the teacher)"))
    if objective == "classify" and not c.get("classify", {}).get("train"):
        errors.append(("classify.train", "", "the classify objective needs training examples: a jsonl of "
                       "{text, label}, or tfds:NAME"))
    if is_int(t.get("global_batch")) and is_int(t.get("microbatches")) and t["microbatches"] >= 1 \
            and t["global_batch"] % t["microbatches"]:
        errors.append(("train.microbatches", t["microbatches"], f"must divide train.global_batch={t['global_batch']}"))
    pieces = flat.get("data.train_sentencepiece")
    if is_int(pieces) and 0 < pieces < 260:
        errors.append(("data.train_sentencepiece", pieces, "a byte-fallback sentencepiece model needs at least 260 "
                       "pieces (256 bytes + specials)"))
    _check_data(c, errors)
    _check_hooks(c, errors)
    _check_model(c, errors)
    _check_paths(c, flat, errors)
    if errors:
        raise schema.ConfigError(errors)


def _check_data(c: dict, errors: list) -> None:
    d = c.get("data", {})
    if d.get("transform") in registry.names("data_transform"):
        try:
            transforms.build(d["transform"], d.get("transform_args") or {})
        except (TypeError, ValueError, OSError) as err:  # an unknown option, a bad or missing word-pair file
            errors.append(("data.transform_args", d.get("transform_args"), f"{d['transform']}: {err}"))
    elif d.get("transform_args") and not d.get("transform"):
        errors.append(("data.transform_args", d["transform_args"], "options of data.transform, which is not set"))
    if d.get("source") in registry.names("data_source"):
        _check_source_args(d["source"], d.get("source_args") or {}, "data.source_args", errors)
    if d.get("source") == "mixture":
        mixture = d.get("mixture") or []
        if not mixture:
            errors.append(("data.mixture", [], "data.source='mixture' needs [{source, source_args, weight}, ...]"))
        for i, part in enumerate(mixture):
            if not isinstance(part, dict) or "source" not in part:
                errors.append((f"data.mixture[{i}]", part, "needs {source, source_args, weight}"))
                continue
            if problem := schema.registered("data_source")(part["source"]):
                errors.append((f"data.mixture[{i}].source", part["source"], problem))
            else:
                _check_source_args(part["source"], part.get("source_args") or {}, f"data.mixture[{i}].source_args",
                                   errors)
            if not (is_number(part.get("weight", 1.0)) and part.get("weight", 1.0) > 0):
                errors.append((f"data.mixture[{i}].weight", part.get("weight"), "must be a number > 0"))


def _check_hooks(c: dict, errors: list) -> None:
    e = c.get("eval", {})
    hooks = e.get("hooks", []) if isinstance(e.get("hooks", []), (list, tuple)) else []
    if "tasks" in hooks and not e.get("tasks"):
        errors.append(("eval.tasks", [], "the 'tasks' hook needs task names, e.g. '[\"lambada_openai\"]'"))
    if "bias_report" in hooks and not e.get("task_data_dir"):
        errors.append(("eval.task_data_dir", "", "the 'bias_report' hook reads the bias suites' files "
                       "(crows_pairs_english.jsonl, winogender.jsonl, bbq.jsonl, toxigen.jsonl; see evaluate "
                       "--prepare) from this folder"))
    if "samples" in hooks and not e.get("sample_prompts"):
        errors.append(("eval.sample_prompts", [], "the 'samples' hook needs prompts, e.g. '[\"Once upon a\"]' "
                       "(or drop it from eval.hooks)"))
    if "classification" in hooks and c.get("objective", "lm") != "classify":
        errors.append(("eval.hooks", None, f"'classification' scores a classify run, not objective "
                       f"{c.get('objective', 'lm')!r}; drop it (valid_loss measures a language model)"))


def _check_source_args(source: str, args: dict, key: str, errors: list) -> None:
    """Source options against the registered function's parameters."""
    params = inspect.signature(registry.get("data_source", source)).parameters
    accepted = [p for p in params if p != "errors"]
    for name in args:
        if name not in accepted:
            errors.append((f"{key}.{name}", None, f"data source {source!r} has no option {name!r}; "
                           f"options: {accepted}"))
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name != "errors" and name not in args:
            errors.append((f"{key}.{name}", None, f"data source {source!r} needs it (options: {accepted})"))
    if "paths" in params and args.get("paths"):
        try:
            expand_paths(args["paths"])
        except ValueError as err:
            errors.append((f"{key}.paths", args["paths"], str(err)))


def _check_model(c: dict, errors: list) -> None:
    m = c.get("model", {})
    if not m or m.get("init_from"):
        return
    if m.get("preset") not in PRESETS:
        errors.append(("model.preset", m.get("preset"), f"unknown preset; presets: {sorted(PRESETS)} (or set "
                       "model.init_from to a checkpoint)"))
        return
    try:
        model_config = preset(m["preset"], **dict(m.get("overrides") or {}))
    except (TypeError, ValueError) as err:
        errors.append(("model.overrides", None, str(err)))
        return
    for kind in sorted(set(model_config.attention_layers)):
        if problem := schema.registered("attention")(kind):
            errors.append(("model.overrides.attention_types", kind, problem))
    seq_len = c.get("data", {}).get("seq_len")
    if is_int(seq_len) and seq_len > model_config.max_position_embeddings:
        errors.append(("data.seq_len", seq_len, f"exceeds the model's max_position_embeddings="
                       f"{model_config.max_position_embeddings}; lower it or raise "
                       "model.overrides.max_position_embeddings"))


def _check_paths(c: dict, flat: dict, errors: list) -> None:
    """Files and directories the config names must exist (data globs are checked by the sources)."""
    keys = ["model.init_from", "data.tokenizer", "distill.teacher"]
    if {"tasks", "bias_report"} & set(c.get("eval", {}).get("hooks") or []):
        keys.append("eval.task_data_dir")
    for key in keys:
        value = flat.get(key)
        if not value:
            continue
        try:
            if not paths.path(str(value)).exists():
                errors.append((key, value, "no such file or directory"))
        except UsageError as e:  # a scheme neojax cannot read
            errors.append((key, None, str(e)))


# --- resuming ------------------------------------------------------------------------------------------
RESUMABLE_CHANGES = ("train.total_steps", "train.log_every", "train.report_mfu", "train.max_nonfinite_streak",
                     "checkpoint.", "eval.", "mesh", "sharding_rules", "data.cache_dir", "profile.", "watchdog.")
# What a resume may change but is told about: optimizer settings that leave the state's shapes
# alone (lowering the learning rate after a blow-up is the usual fix).
NOTED_CHANGES = ("optimizer.lr", "optimizer.warmup_steps", "optimizer.decay_steps", "optimizer.final_lr_ratio",
                 "optimizer.clip", "optimizer.weight_decay", "optimizer.schedule")


def config_changes(saved: dict, new: dict) -> tuple[list[str], list[str]]:
    """(refused, noted) differences between a workdir's saved config and this run's, as
    'key: saved -> new'. Length, cadence, hooks and mesh may change silently."""
    a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(new)))
    defaults = _flat(json.loads(json.dumps(schema.defaults())))
    refused, noted = [], []
    for key in sorted(set(a) | set(b)):
        if key.startswith(RESUMABLE_CHANGES) or a.get(key) == b.get(key):
            continue
        if key not in a and key in defaults and b.get(key) == defaults[key]:
            continue  # a key added to the schema since the run began, at its default: nothing changes
        change = f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
        (noted if key in NOTED_CHANGES else refused).append(change)
    return refused, noted
