"""Atomic directory writes, and the native neojax model format (orbax params + neojax.json)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid

import jax
import numpy as np

from neojax.model.config import GPTNeoConfig

NATIVE_MARKER = "neojax.json"


@contextlib.contextmanager
def atomic_directory(directory: str, overwrite: bool = False):
    """Yield a temporary sibling directory; it replaces `directory` only once the block succeeds,
    so a crash never leaves a half-written model where a good one (or nothing) was."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)) and not overwrite:
        raise FileExistsError(f"{directory} already exists and is not empty; choose another destination "
                              "or pass overwrite=True (--overwrite)")
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _usual_modes(tmp)
    old = None
    if os.path.exists(directory):
        old = f"{directory}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _usual_modes(directory: str) -> None:
    """Files as any program writes them (0644 under the usual umask): some writers use 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def set_path(tree: dict, path: tuple, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def check_params(params, config: GPTNeoConfig, source: str = "params"):
    """Raise a ValueError naming the first parameter whose presence or shape disagrees with `config`."""
    from neojax.model.gpt_neo import param_shapes
    flat_want = {"/".join(map(str, k)): v.shape for k, v in _flatten(param_shapes(config))}
    flat_have = {"/".join(map(str, k)): np.shape(v) for k, v in _flatten(params)}
    for name in sorted(set(flat_want) | set(flat_have)):
        if name not in flat_have:
            raise ValueError(f"{source}: parameter {name} is missing (config expects shape {flat_want[name]})")
        if name not in flat_want:
            raise ValueError(f"{source}: parameter {name} is not part of GPT-Neo with this config")
        if tuple(flat_have[name]) != tuple(flat_want[name]):
            raise ValueError(f"{source}: parameter {name} has shape {tuple(flat_have[name])} but the config "
                             f"expects {tuple(flat_want[name])}; does the config match the weights?")


def _flatten(tree):
    return [(tuple(getattr(k, "key", k) for k in path), v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


def write_model_card(directory: str, config: GPTNeoConfig, tokenizer=None) -> None:
    """neojax.json (+ tokenizer) without params: a training workdir's model/ folder."""
    from neojax import __version__
    os.makedirs(directory, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(directory)
    tmp = os.path.join(directory, NATIVE_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": "neojax", "neojax_version": __version__, "model": config.to_dict()}, f, indent=2)
    os.replace(tmp, os.path.join(directory, NATIVE_MARKER))


def read_model_card(directory: str):
    from neojax.data.tokenizer import Tokenizer
    path = os.path.join(directory, NATIVE_MARKER)
    try:
        with open(path) as f:
            config = GPTNeoConfig.from_dict(json.load(f)["model"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is damaged or not a neojax model card ({' '.join(str(e).split())})") from None
    try:
        tokenizer = Tokenizer.from_path(directory)
    except FileNotFoundError:
        tokenizer = None
    return config, tokenizer


def load_workdir(workdir: str, step=None):
    """(config, params, tokenizer) of a training workdir's latest intact (or the given) checkpoint."""
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    from neojax.finetune.lora import is_lora, merge
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's notices on every read-only open
    config, tokenizer = read_model_card(os.path.join(workdir, "model"))
    with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               item_names=("state", "data", "meta"),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet (checkpoints/ is empty)")
        quiet_orbax_coroutines()
        for i, step in enumerate(steps):
            try:
                state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
                break
            except Exception as e:  # orbax and tensorstore raise many types for unreadable files
                if i == len(steps) - 1:
                    raise ValueError(f"{workdir}: checkpoint {step} cannot be read ({first_line(e)}); no intact "
                                     "checkpoint is left") from None
                print(f"warning: {workdir}: checkpoint {step} is damaged ({first_line(e)}); using step {steps[i + 1]}",
                      file=sys.stderr, flush=True)
    params = state["params"]
    if is_lora(params):  # a LoRA run: the adapters merged into the base
        params = merge(params)
    params = jax.tree.map(np.asarray, params)
    check_params(params, config, f"{workdir} step {step}")
    return config, params, tokenizer


def quiet_orbax_coroutines() -> None:
    """A failed restore leaves orbax read coroutines that Python reports at exit as 'Exception
    ignored in' tracebacks, burying the one-line error: drop those reports, keep all others."""
    previous = sys.unraisablehook
    if getattr(previous, "neojax", False):
        return

    def hook(unraisable):
        tb, files = unraisable.exc_traceback, []
        while tb is not None:
            files.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        if not any("orbax" in f for f in files):
            previous(unraisable)

    hook.neojax = True
    sys.unraisablehook = hook




def first_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def save_native(directory: str, params, config: GPTNeoConfig, tokenizer=None, overwrite: bool = False) -> str:
    """Write a neojax model directory: neojax.json (config), params/ (orbax), tokenizer file."""
    import orbax.checkpoint as ocp

    from neojax import __version__
    with atomic_directory(directory, overwrite) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), params)
            ckptr.wait_until_finished()
        if tokenizer is not None:
            tokenizer.save(tmp)
        with open(os.path.join(tmp, NATIVE_MARKER), "w") as f:
            json.dump({"format": "neojax", "neojax_version": __version__, "model": config.to_dict()}, f, indent=2)
    return directory


def load_native(directory: str, target=None):
    """(config, params, tokenizer or None) from a neojax model directory.

    `target` (a pytree of jax.ShapeDtypeStruct, optionally with shardings) restores straight onto
    devices; by default params come back as host numpy arrays of the config's shapes."""
    import orbax.checkpoint as ocp

    from neojax.model.gpt_neo import param_shapes
    config, tokenizer = read_model_card(directory)
    expected = param_shapes(config)
    if target is None:
        target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), expected)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(os.path.join(os.path.abspath(directory), "params"), target)
        except ValueError as e:
            raise ValueError(f"cannot restore params from {directory} onto the shapes its neojax.json implies: "
                             f"{e}") from e
    return config, params, tokenizer
