"""The full schema of a training config. Experiments start from `base_config()`, change values
and return it locked, so a typo (in a file or a --config.key=value flag) names the valid keys.
`check_config` validates a whole config before any work; `config_changes` says what a resume
would change."""
from __future__ import annotations

import ast
import difflib
import glob
import importlib.util
import inspect
import json
import os
import re

import ml_collections

# Every component a config can name registers on import: attention variants, tasks, hooks, ...
import neojax.evaluate  # noqa: F401
import neojax.model  # noqa: F401
import neojax.train.hooks  # noqa: F401
import neojax.train.objectives  # noqa: F401
import neojax.train.optim  # noqa: F401
from neojax import paths, registry, sharding
from neojax.cli import UsageError
from neojax.data.sources import expand_paths
from neojax.model.config import PRESETS, is_int, is_number, preset

EXPERIMENT_DIRS = [os.path.join(os.getcwd(), "experiments"),
                   os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "experiments")]


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.objective = "lm"            # what the loop trains: lm | distill | classify (neojax.train.objectives)
    c.model = dict(
        preset="tiny",            # a neojax.model preset, or "" when init_from gives the model
        init_from="",             # HF / neojax checkpoint to start from (fine-tuning)
        overrides={},             # GPTNeoConfig fields changed on top of the preset
        dtype="float32",          # activations; params stay float32
        remat="none",             # none | full | dots
    )
    c.data = dict(
        source="stdlib",          # a registered data_source or batch_source (chat), or "mixture"
        source_args={},           # options of that source
        mixture=[],               # for source="mixture": [{"source", "source_args", "weight"}]
        tokenizer="",             # a tokenizer file/dir; "" = the checkpoint's, or train_sentencepiece
        train_sentencepiece=0,    # > 0: train a sentencepiece model of this vocab on the source (cached)
        seq_len=128,
        valid_fraction=0.01,
        on_error="raise",         # raise | skip bad records
        cache_dir="",             # default: WORKDIR/data_cache
        seed=0,
    )
    c.optimizer = dict(schedule="cosine", lr=3e-4, warmup_steps=100, decay_steps=0, final_lr_ratio=0.1,
                       b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0)
    c.lora = dict(rank=0,              # > 0: train LoRA adapters of this rank; the base stays frozen
                  alpha=16.0,          # adapter scale = alpha / rank
                  targets=[r"attn/(q|v)_proj/kernel"])  # regexes over parameter paths (h_0/attn/q_proj/kernel)
    c.distill = dict(teacher="",          # a checkpoint (HF / neojax / workdir): distil its predictions
                     temperature=2.0,     # softening of both distributions
                     alpha=0.5)           # weight of T^2 * KL(teacher || student) against the LM loss
    c.train = dict(total_steps=1000, global_batch=16, microbatches=1, z_loss=0.0, seed=0,
                   max_nonfinite_streak=10, log_every=10, report_mfu=True,
                   keep_zeros=False)  # pruned fine-tuning: block kernels' zero weights stay exactly zero
    c.checkpoint = dict(every_steps=200, keep=3, keep_period=0, async_save=True)
    c.eval = dict(every_steps=200, valid_batches=8, hooks=["valid_loss"], sample_prompts=[],
                  sample_max_new_tokens=48, sample_temperature=0.8, sample_top_p=0.95,  # sampled, as people read
                  tasks=[], task_data_dir="", task_limit=0, num_fewshot=0)  # for the "tasks" hook
    c.mesh = "data=-1,fsdp=1,tensor=1"
    c.sharding_rules = ()         # empty = neojax.sharding.DEFAULT_RULES
    return c


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
FREE_FORM = ("model.overrides", "data.source_args")  # dicts whose keys the user chooses


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
    """Validate a whole training config before any work: types, ranges, registered names, paths.
    Raises a UsageError with one line per problem, each naming the key and the fix."""
    errors = []
    c = config.to_dict()
    flat = _flat(c)
    get = flat.get

    def need(key, ok, what):
        if key in flat and not ok(flat[key]):
            errors.append(f"--config.{key}={json.dumps(flat[key], default=str)}: {what}")

    for key in ("train.total_steps", "train.global_batch", "train.microbatches", "train.log_every",
                "train.max_nonfinite_streak", "checkpoint.every_steps", "checkpoint.keep", "data.seq_len",
                "eval.valid_batches", "eval.sample_max_new_tokens"):
        need(key, lambda v: is_int(v) and v >= 1, "must be an integer >= 1")
    for key in ("checkpoint.keep_period", "eval.every_steps", "eval.task_limit", "eval.num_fewshot",
                "optimizer.warmup_steps", "optimizer.decay_steps", "data.train_sentencepiece", "lora.rank",
                "train.seed", "data.seed"):
        need(key, lambda v: is_int(v) and v >= 0, "must be an integer >= 0 (0 = off / default)")
    need("optimizer.lr", lambda v: is_number(v) and v > 0, "the learning rate must be a finite number > 0")
    need("optimizer.eps", lambda v: is_number(v) and v > 0, "must be a finite number > 0")
    for key in ("optimizer.weight_decay", "optimizer.clip", "train.z_loss", "eval.sample_temperature"):
        need(key, lambda v: is_number(v) and v >= 0, "must be a finite number >= 0 (0 = off)")
    for key in ("optimizer.b1", "optimizer.b2", "data.valid_fraction"):
        need(key, lambda v: is_number(v) and 0 <= v < 1, "must be a number in [0, 1)")
    need("eval.sample_top_p", lambda v: is_number(v) and 0 < v <= 1, "must be a number in (0, 1] (1 = off)")
    need("optimizer.final_lr_ratio", lambda v: is_number(v) and 0 <= v <= 1, "must be a number in [0, 1]")
    need("lora.alpha", lambda v: is_number(v) and v > 0, "must be a finite number > 0")
    need("distill.temperature", lambda v: is_number(v) and v > 0, "must be a finite number > 0")
    need("distill.alpha", lambda v: is_number(v) and 0 <= v <= 1, "must be a number in [0, 1]")
    teacher, objective = c.get("distill", {}).get("teacher"), c.get("objective")
    if objective == "distill" and not teacher:
        errors.append("--config.objective=distill: needs a teacher; set --config.distill.teacher=CHECKPOINT")
    elif teacher and objective != "distill":
        errors.append(f"--config.distill.teacher={teacher}: only the distill objective reads it; "
                      "add --config.objective=distill (or drop the teacher)")
    need("model.dtype", lambda v: v in ("float32", "bfloat16"), "choose 'float32' or 'bfloat16'")
    need("train.keep_zeros", lambda v: isinstance(v, bool), "must be true or false")
    need("model.remat", lambda v: v in ("none", "full", "dots"), "choose 'none', 'full' or 'dots'")
    need("data.on_error", lambda v: v in ("raise", "skip"), "choose 'raise' or 'skip'")
    t = c.get("train", {})
    if is_int(t.get("global_batch")) and is_int(t.get("microbatches")) and t["microbatches"] >= 1 \
            and t["global_batch"] % t["microbatches"]:
        errors.append(f"--config.train.microbatches={t['microbatches']}: must divide train.global_batch="
                      f"{t['global_batch']}")
    if is_int(get("data.train_sentencepiece")) and 0 < get("data.train_sentencepiece") < 260:
        errors.append(f"--config.data.train_sentencepiece={get('data.train_sentencepiece')}: a byte-fallback "
                      "sentencepiece model needs at least 260 pieces (256 bytes + specials)")
    _check_names(c, errors)
    _check_model(c, errors)
    _check_paths(c, flat, errors)
    if errors:
        raise UsageError("\n".join(errors))


def _registered(kind: str, name, key: str, errors: list, extra=()) -> None:
    known = sorted(set(registry.names(kind)) | set(extra))
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        errors.append(f"--config.{key}={name!r}: unknown {kind}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                      f"registered: {known}")


def _check_names(c: dict, errors: list) -> None:
    d, e, o = c.get("data", {}), c.get("eval", {}), c.get("optimizer", {})
    if "source" in d:
        _registered("data_source", d["source"], "data.source", errors,
                    extra=("mixture", *registry.names("batch_source")))
        if d["source"] in registry.names("data_source"):
            _check_source_args(d["source"], d.get("source_args") or {}, "data.source_args", errors)
        if d["source"] == "mixture":
            mixture = d.get("mixture") or []
            if not mixture:
                errors.append("--config.data.mixture=[]: data.source='mixture' needs "
                              "[{source, source_args, weight}, ...]")
            for i, part in enumerate(mixture):
                if not isinstance(part, dict) or "source" not in part:
                    errors.append(f"--config.data.mixture[{i}]={part!r}: needs {{source, source_args, weight}}")
                    continue
                _registered("data_source", part["source"], f"data.mixture[{i}].source", errors)
                if part["source"] in registry.names("data_source"):
                    _check_source_args(part["source"], part.get("source_args") or {},
                                       f"data.mixture[{i}].source_args", errors)
                if not (is_number(part.get("weight", 1.0)) and part.get("weight", 1.0) > 0):
                    errors.append(f"--config.data.mixture[{i}].weight={part.get('weight')!r}: must be a number > 0")
    if "objective" in c:
        _registered("objective", c["objective"], "objective", errors)
    if "schedule" in o:
        _registered("schedule", o["schedule"], "optimizer.schedule", errors)
    hooks = e.get("hooks", [])
    if not isinstance(hooks, (list, tuple)):
        errors.append(f"--config.eval.hooks={hooks!r}: must be a list of names, e.g. '[\"valid_loss\"]'")
        hooks = []
    for i, hook in enumerate(hooks):
        _registered("eval", hook, f"eval.hooks[{i}]", errors)
    for i, task in enumerate(e.get("tasks", []) or []):
        _registered("task", task, f"eval.tasks[{i}]", errors)
    if "tasks" in hooks and not e.get("tasks"):
        errors.append("--config.eval.tasks=[]: the 'tasks' hook needs task names, e.g. '[\"lambada_openai\"]'")
    if "samples" in hooks and not e.get("sample_prompts"):
        errors.append("--config.eval.sample_prompts=[]: the 'samples' hook needs prompts, e.g. '[\"Once upon a\"]' "
                      "(or drop it from eval.hooks)")
    if "classification" in hooks and c.get("objective", "lm") != "classify":
        errors.append(f"--config.eval.hooks: 'classification' scores a classify run, not objective "
                      f"{c.get('objective', 'lm')!r}; drop it (valid_loss measures a language model)")
    for i, target in enumerate(c.get("lora", {}).get("targets", []) or []):
        try:
            re.compile(target)
        except (re.error, TypeError) as err:
            errors.append(f"--config.lora.targets[{i}]={target!r}: not a regular expression ({err})")
    if "mesh" in c:
        try:
            sharding.parse_mesh(c["mesh"])
        except ValueError as err:
            errors.append(f"--config.mesh={c['mesh']!r}: {err}")


def _check_source_args(source: str, args: dict, key: str, errors: list) -> None:
    """Source options against the registered function's parameters."""
    params = inspect.signature(registry.get("data_source", source)).parameters
    accepted = [p for p in params if p != "errors"]
    for name in args:
        if name not in accepted:
            errors.append(f"--config.{key}.{name}: data source {source!r} has no option {name!r}; "
                          f"options: {accepted}")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name != "errors" and name not in args:
            errors.append(f"--config.{key}.{name}: data source {source!r} needs it (options: {accepted})")
    if "paths" in params and args.get("paths"):
        try:
            expand_paths(args["paths"])
        except ValueError as err:
            errors.append(f"--config.{key}.paths={json.dumps(args['paths'], default=str)}: {err}")


def _check_model(c: dict, errors: list) -> None:
    m = c.get("model", {})
    if not m:
        return
    if not m.get("init_from"):
        if m.get("preset") not in PRESETS:
            errors.append(f"--config.model.preset={m.get('preset')!r}: unknown preset; presets: {sorted(PRESETS)} "
                          "(or set model.init_from to a checkpoint)")
            return
        try:
            model_config = preset(m["preset"], **dict(m.get("overrides") or {}))
        except (TypeError, ValueError) as err:
            errors.append(f"--config.model.overrides: {err}")
            return
        for kind in sorted(set(model_config.attention_layers)):
            _registered("attention", kind, "model.overrides.attention_types", errors)
        seq_len = c.get("data", {}).get("seq_len")
        if is_int(seq_len) and seq_len > model_config.max_position_embeddings:
            errors.append(f"--config.data.seq_len={seq_len}: exceeds the model's max_position_embeddings="
                          f"{model_config.max_position_embeddings}; lower it or raise "
                          "model.overrides.max_position_embeddings")


def _check_paths(c: dict, flat: dict, errors: list) -> None:
    """Files and directories the config names must exist (data globs are checked by the sources)."""
    keys = ["model.init_from", "data.tokenizer", "distill.teacher"]
    if "tasks" in (c.get("eval", {}).get("hooks") or []):
        keys.append("eval.task_data_dir")
    for key in keys:
        value = flat.get(key)
        if not value:
            continue
        try:
            if not paths.path(str(value)).exists():
                errors.append(f"--config.{key}={value!r}: no such file or directory")
        except UsageError as e:  # a scheme neojax cannot read
            errors.append(f"--config.{key}: {e}")


# --- resuming ------------------------------------------------------------------------------------------
RESUMABLE_CHANGES = ("train.total_steps", "train.log_every", "train.report_mfu", "train.max_nonfinite_streak",
                     "checkpoint.", "eval.", "mesh", "sharding_rules", "data.cache_dir")
# What a resume may change but is told about: optimizer settings that leave the state's shapes
# alone (lowering the learning rate after a blow-up is the usual fix).
NOTED_CHANGES = ("optimizer.lr", "optimizer.warmup_steps", "optimizer.decay_steps", "optimizer.final_lr_ratio",
                 "optimizer.clip", "optimizer.weight_decay", "optimizer.schedule")


def config_changes(saved: dict, new: dict) -> tuple[list[str], list[str]]:
    """(refused, noted) differences between a workdir's saved config and this run's, as
    'key: saved -> new'. Length, cadence, hooks and mesh may change silently."""
    a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(new)))
    refused, noted = [], []
    for key in sorted(set(a) | set(b)):
        if key.startswith(RESUMABLE_CHANGES) or a.get(key) == b.get(key):
            continue
        change = f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
        (noted if key in NOTED_CHANGES else refused).append(change)
    return refused, noted
