"""The native neojax model format (orbax params + neojax.json), training workdirs' model cards,
and the parameter check every loader runs."""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from neojax import __version__, paths
from neojax.cli import message
from neojax.data.tokenizer import Tokenizer
from neojax.files import atomic_directory, write_json
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import param_shapes
from neojax.model.lora import is_lora, merge
from neojax.model.quant import is_quantized, quantized_shapes
from neojax.tree import named_leaves, path_keys

NATIVE_MARKER = "neojax.json"


def check_params(params, config: GPTNeoConfig, source: str = "params"):
    """Raise a ValueError naming the first parameter whose presence or shape disagrees with `config`."""
    shapes = param_shapes(config)
    flat_want = {k: v.shape for k, v in named_leaves(quantized_shapes(shapes) if is_quantized(params)
                                                     else shapes).items()}
    flat_have = {k: np.shape(v) for k, v in named_leaves(params).items()}
    for name in sorted(set(flat_want) | set(flat_have)):
        if name not in flat_have:
            raise ValueError(f"{source}: parameter {name} is missing (config expects shape {flat_want[name]})")
        if name not in flat_want:
            raise ValueError(f"{source}: parameter {name} is not part of GPT-Neo with this config")
        if tuple(flat_have[name]) != tuple(flat_want[name]):
            raise ValueError(f"{source}: parameter {name} has shape {tuple(flat_have[name])} but the config "
                             f"expects {tuple(flat_want[name])}; does the config match the weights?")


def _card(config: GPTNeoConfig, quantization: Optional[str] = None) -> dict:
    card = {"format": "neojax", "neojax_version": __version__, "model": config.to_dict()}
    return {**card, "quantization": quantization} if quantization else card


def write_model_card(directory: str, config: GPTNeoConfig, tokenizer=None) -> None:
    """neojax.json (+ tokenizer) without params: a training workdir's model/ folder."""
    paths.path(directory).mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(directory)
    write_json(str(paths.path(directory) / NATIVE_MARKER), _card(config))


def read_model_card(directory: str):
    """(config, tokenizer or None, quantization or None) of a neojax directory."""
    path = paths.path(directory) / NATIVE_MARKER
    try:
        card = json.loads(path.read_text())
        config = GPTNeoConfig.from_dict(card["model"])
        quantization = card.get("quantization")
        if quantization not in (None, "int8"):
            raise ValueError(f"unknown quantization {quantization!r}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is damaged or not a neojax model card ({first_line(e)})") from None
    return config, Tokenizer.find(directory), quantization


def load_workdir(workdir: str, step=None):
    """(config, params, tokenizer) of a training workdir's latest intact (or the given) checkpoint."""
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's notices on every read-only open
    config, tokenizer, _ = read_model_card(str(paths.path(workdir) / "model"))
    with ocp.CheckpointManager(paths.path(workdir) / "checkpoints",
                               item_handlers={"state": ocp.StandardCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet (checkpoints/ is empty)")
        quiet_orbax()
        for i, step in enumerate(steps):
            try:
                state = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(here(manager.item_metadata(step)["state"]))))["state"]
                break
            except Exception as e:  # orbax and tensorstore raise many types for unreadable files
                blocked = unreadable(str(paths.path(workdir) / "checkpoints" / str(step)))
                if blocked:
                    raise ValueError(f"{workdir}: checkpoint {step} cannot be read: {blocked}; give this user read "
                                     "access and run again") from None
                if i == len(steps) - 1:
                    raise ValueError(f"{workdir}: checkpoint {step} cannot be read ({first_line(e)}); no intact "
                                     "checkpoint is left") from None
                print(f"warning: {workdir}: checkpoint {step} is damaged ({first_line(e)}); using step {steps[i + 1]}",
                      file=sys.stderr, flush=True)
    params = state["params"]
    if is_lora(params):  # a LoRA run: the adapters merged into the base
        params = merge(params)
    if set(params) == {"transformer", "score"}:  # a classification run: its GPT-Neo (hf/ holds the head)
        params = params["transformer"]
    params = jax.tree.map(np.asarray, params)
    check_params(params, config, f"{workdir} step {step}")
    return config, params, tokenizer


def here(metadata):
    """A restore target for saved array metadata, whatever mesh, device count or process count wrote
    it (orbax otherwise restores the saved layout, which fails on fewer devices): the parameters as
    host arrays (a command then places them in their shards: no device holds one whole), the rest
    (step counters, random keys) on this process's first device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(path, m):
        if path_keys(path)[:1] == ("params",):
            return np.empty(m.shape, m.dtype)
        return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
    return jax.tree_util.tree_map_with_path(target, metadata)


def quiet_orbax() -> None:
    """A failed save or restore makes orbax, its asyncio tasks and tensorstore's callbacks report
    every failing read or write (hundreds of tracebacks for one full disk or one damaged file,
    some at exit); the failure itself still reaches the caller, which reports it in one line. Drop
    those reports, keep every other: log records, warnings, unraisable exceptions and exceptions
    printed from C (tensorstore calling into a closed event loop)."""
    for name in ("asyncio", "absl"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxRecords) for f in logger.filters):
            logger.addFilter(_OrbaxRecords())
    # a failed restore's read coroutines, collected unawaited, warn from orbax's own modules
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning,
                            module=r"orbax\.")
    if getattr(sys.unraisablehook, "neojax", False):
        return
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable(report):
        if not _from_orbax(report.exc_type, report.exc_value, report.exc_traceback):
            previous_unraisable(report)

    def excepthook(kind, error, tb):
        if not _from_orbax(kind, error, tb):
            previous_except(kind, error, tb)

    unraisable.neojax = excepthook.neojax = True
    sys.unraisablehook, sys.excepthook = unraisable, excepthook


def _from_orbax(kind, error, tb) -> bool:
    if kind is RuntimeError and str(error) == "Event loop is closed":  # a callback after a failed save
        return True
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _OrbaxRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        return not ("orbax" in record.pathname or "orbax" in record.getMessage() or
                    (record.exc_info is not None and _from_orbax(*record.exc_info)))


def unreadable(directory: str) -> Optional[str]:
    """'FILE (reason)' for the first file or folder under a local `directory` this process may not
    read (permissions, I/O errors), else None: a restore that fails for that is not damage."""
    if paths.is_remote(directory):
        return None
    listing_errors = []
    for root, _, files in os.walk(directory, onerror=listing_errors.append):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    f.read(1)
            except OSError as e:
                return f"{os.path.join(root, name)} ({e.strerror})"
    return f"{listing_errors[0].filename} ({listing_errors[0].strerror})" if listing_errors else None


def first_line(error: BaseException, limit: int = 160) -> str:
    """The error in one line (as the command lines print it), cut at `limit` characters."""
    text = message(error)
    return text if len(text) <= limit else text[:limit] + "..."


def save_native(directory: str, params, config: GPTNeoConfig, tokenizer=None, overwrite: bool = False) -> str:
    """Write a neojax model directory: neojax.json (config), params/ (orbax), tokenizer file. int8
    params (neojax.model.quant) are written as they are, marked "quantization": "int8"."""
    with atomic_directory(directory, overwrite) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(os.path.abspath(tmp), "params"), params)
            ckptr.wait_until_finished()
        if tokenizer is not None:
            tokenizer.save(tmp)
        write_json(os.path.join(tmp, NATIVE_MARKER), _card(config, "int8" if is_quantized(params) else None))
    return directory


def load_native(directory: str, target=None):
    """(config, params, tokenizer or None) from a neojax model directory.

    `target` (a pytree of jax.ShapeDtypeStruct, optionally with shardings) restores straight onto
    devices; by default params come back as host numpy arrays of the config's shapes."""
    config, tokenizer, quantization = read_model_card(directory)
    expected = param_shapes(config)
    if quantization == "int8":
        expected = quantized_shapes(expected)
    if target is None:
        target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), expected)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(paths.path(directory) / "params", target)
        except ValueError as e:
            raise ValueError(f"cannot restore params from {directory} onto the shapes its neojax.json implies: "
                             f"{e}") from e
    return config, params, tokenizer
