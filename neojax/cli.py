"""What every command line shares: one-line errors with exit code 2, checked option types.

    parser = cli.ArgumentParser(prog="python -m neojax.x")
    parser.add_argument("--stride", type=cli.positive_int)
    sys.exit(cli.run(main, argv))

A bad input ends in `error: <what>, <why>, <fix>` on stderr and exit code 2; an unexpected
failure in one line and exit code 1. NEOJAX_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import sys
import time
from typing import Callable, Optional, Sequence

from neojax import paths
from neojax.errors import UsageError

USAGE_EXIT, INTERNAL_EXIT = 2, 1




# What reading an input (a flag's value, a file, a directory) raises when the input is wrong: inside
# `about(input)` these become UsageErrors naming the input. Anywhere else a ValueError or KeyError is
# a bug in neojax and is reported as one (exit 1), never blamed on the user's input.
INPUT_ERRORS = (UsageError, ValueError, KeyError, OSError, re.error)
USER_ERRORS = (UsageError, OSError)  # what `run` reports as the user's (a file missing, a disk full, ...)


def message(error: BaseException) -> str:
    """One line for `error`: KeyError's quotes dropped, OSError's file named, newlines folded."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    elif isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    elif isinstance(error, re.error):
        text = f"invalid regular expression {error.pattern!r}: {error.msg}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def debug() -> bool:
    return os.environ.get("NEOJAX_DEBUG", "") not in ("", "0")


def run(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """main(argv) with bad inputs turned into one line and exit code 2 (see the module doc), its
    compiled programs kept across runs (`keep_compiled_programs`)."""
    keep_compiled_programs()
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug():
            raise
        print(f"error: {message(e)}", file=sys.stderr)
        return USAGE_EXIT
    except Exception as e:  # a bug in neojax: one line, and how to see more
        if debug():
            raise
        print(f"error: internal {type(e).__name__}: {message(e)} (rerun with NEOJAX_DEBUG=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        return INTERNAL_EXIT


def keep_compiled_programs() -> None:
    """jax's persistent compilation cache in $XDG_CACHE_HOME/neojax/xla (~/.cache/neojax/xla): a run
    restarted after a preemption, or the same experiment again, loads its train step instead of
    compiling it. JAX_COMPILATION_CACHE_DIR names another folder, JAX_ENABLE_COMPILATION_CACHE=false
    turns it off; a home that cannot be written to leaves it off."""
    import jax  # deferred: the rest of this module needs no jax
    if jax.config.jax_compilation_cache_dir or not jax.config.jax_enable_compilation_cache:
        return
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "neojax", "xla")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        jax.config.update("jax_compilation_cache_dir", folder)


@contextlib.contextmanager
def about(flag: str):
    """Input errors raised inside name `flag` (e.g. "--checkpoint"), so the user knows which input."""
    try:
        yield
    except UsageError:
        raise
    except INPUT_ERRORS as e:
        raise UsageError(f"{flag}: {message(e)}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (not the whole usage) with exit code 2."""

    def error(self, text: str):
        raise SystemExit(self._fail(text))

    def _fail(self, text: str) -> int:
        print(f"error: {' '.join(text.split())} (see {self.prog} --help)", file=sys.stderr)
        return USAGE_EXIT


def _typed(convert, check, want: str):
    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}")
        return value
    parse.__name__ = want  # argparse names the type in its messages
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "a non-negative integer (0 = off)")
seed = _typed(int, lambda v: 0 <= v < 2 ** 32, "a seed from 0 to 4294967295 (32 bits, as the server's)")
nonneg_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
probability = _typed(float, lambda v: math.isfinite(v) and 0 < v <= 1, "a number in (0, 1]")


def require(module: str, feature: str, package: str):
    """Import an optional heavy dependency for `feature`, or say which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{feature} needs the optional package {package}: pip install {package} "
                         "(or pip install -r requirements-optional.txt)") from None


def unescape(text: str) -> str:
    r"""The escapes a shell passes through literally: \n, \t, \r and \\ (as in --stop "\n\n")."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def readable_file(flag: str, path: str) -> str:
    """`path` if it is a readable file; otherwise a UsageError naming the flag."""
    if paths.is_remote(path):
        if not paths.exists(path) or paths.is_dir(path):
            raise UsageError(f"{flag} {path}: no such file")
        return path
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory; give a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{flag} {path} is not readable (check its permissions)")
    return path


def existing_path(flag: str, path: str) -> str:
    """`path` (`~` expanded locally; gs:// and s3:// as they are) if it exists; otherwise a UsageError
    naming the flag."""
    with about(f"{flag} {path}"):  # an unsupported scheme is named with its flag
        found = path if paths.is_remote(path) else os.path.expanduser(path)
        if not paths.exists(found):
            raise UsageError(f"{flag} {path}: no such file or directory")
    return found


def writable_output(flag: str, path: str) -> str:
    """Check before any work that a file can be written whole at `path` (paths.output_problem: not a
    device, FIFO, socket or folder, its directory there and writable; a symlink is written through
    to its target). On object storage a write shows it: nothing is checked here."""
    problem = paths.output_problem(path)
    if problem:
        raise UsageError(f"{flag} {path} {problem}")
    return path


def writable_folder(flag: str, path: str, overwrite: bool = False) -> str:
    """Check before any work that a folder can be written at `path` (files.atomic_directory): absent,
    an empty folder, or (`overwrite`) a folder to replace; a symlink to a folder is written through."""
    if paths.is_remote(path):
        return path
    problem = paths.not_a_folder(path)
    if problem:
        raise UsageError(f"{flag} {path} {problem}; choose another path")
    local = os.path.realpath(os.path.expanduser(path))
    if os.path.isdir(local) and os.listdir(local) and not overwrite:
        raise UsageError(f"{flag} {path} already exists and is not empty; choose another path or pass --overwrite")
    return path


def apart(flag: str, output: str, source_flag: str, source: str) -> None:
    """An output directory that is the source or holds it would destroy the source when replaced:
    refused, naming both."""
    out, src = str(paths.path(os.path.expanduser(output))), str(paths.path(os.path.expanduser(source)))
    if not paths.is_remote(output):
        out, src = os.path.realpath(out), os.path.realpath(src)
    if src == out or src.startswith(out.rstrip("/") + "/"):
        raise UsageError(f"{flag} {output} {'is' if src == out else 'holds'} {source_flag} {source}; writing there "
                         "would destroy it: choose another path")


def duration(seconds: float) -> str:
    """h:mm:ss, hours unbounded (an ETA of days stays readable)."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line on stderr at most every `every` seconds, and at the end: done/total, rate, ETA
    (`show`: False on every process of a multi-process run but the one that speaks for it)."""

    def __init__(self, label: str, total: int, unit: str = "requests", every: float = 5.0, show: bool = True):
        self.label, self.total, self.unit, self.every, self.show = label, total, unit, every, show
        self.done, self.start = 0, time.perf_counter()
        self.shown = self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.show and (now - self.shown >= self.every or self.done >= self.total):
            self.shown = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            print(f"  {self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f}/s, eta {duration(eta)}",
                  file=sys.stderr, flush=True)


def add_model_options(parser) -> None:
    """--dtype, --quantize and --kv_cache: how a command runs a checkpoint (see model_options)."""
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--quantize", choices=["int8"], help="int8 weights (per output channel) in memory")
    parser.add_argument("--kv_cache", default="auto", choices=["auto", "int8"],
                        help="decoding caches in the compute dtype (auto) or int8 with per-position scales")


def model_options(args) -> dict:
    """The keyword arguments of neojax.checkpoint.load for add_model_options' flags."""
    return {"dtype": args.dtype, "kv_cache": args.kv_cache, "quantize": args.quantize}
