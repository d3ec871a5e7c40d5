"""Document sources, registered by name (kind "data_source"): each yields documents (str) in a
fixed order. Options come from the experiment's `data.source_args`.

    text_files  paths/globs of plain text; one document per file or per blank-line block
    jsonl       .jsonl or .jsonl.zst (the Pile's shards): text_field, optional meta filter
    tfds        a TensorFlow Datasets dataset already prepared in data_dir (never downloads)
    stdlib      the Python standard library's own source files: a corpus on every machine
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sysconfig
from typing import Iterable, Iterator, Sequence

import numpy as np
import zstandard

from neojax import paths, registry
from neojax.cli import require

log = logging.getLogger("neojax.data")


class DataError(ValueError):
    """Bad input data: the message names the file (and line) and the fix."""


class ErrorPolicy:
    """on_error="raise" stops at the first bad record; "skip" counts it, logs it and goes on."""

    def __init__(self, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: choose 'raise' or 'skip'")
        self.on_error, self.skipped = on_error, 0

    def __call__(self, message: str):
        if self.on_error == "raise":
            raise DataError(message + " (set data.on_error='skip' to skip such records)")
        self.skipped += 1
        if self.skipped <= 10:
            log.warning("skipping: %s", message)


def expand_paths(patterns: Sequence[str] | str) -> list[str]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise DataError("no paths given: set data.source_args.paths to files or globs")
    files = []
    for pattern in patterns:
        matched = paths.glob(pattern)
        if not matched:
            raise DataError(f"{pattern!r} matches no files")
        files.extend(matched)
    return files


def _read_text(path: str, errors: ErrorPolicy):
    with paths.path(path).open("rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        errors(f"{path} is not valid UTF-8 at byte {e.start}")
        return None


@registry.register("data_source", "text_files")
def text_files(paths, split: str = "file", errors: ErrorPolicy = None) -> Iterator[str]:
    """Plain text files; split="file" (a document per file) or "blank_line" (per paragraph block)."""
    if split not in ("file", "blank_line"):
        raise ValueError(f"split={split!r}: choose 'file' or 'blank_line'")
    errors = errors or ErrorPolicy()
    for path in expand_paths(paths):
        text = _read_text(path, errors)
        if text is None:
            continue
        if split == "file":
            if text.strip():
                yield text
        else:
            yield from (block for block in re.split(r"\n\s*\n", text) if block.strip())


def _open_lines(path: str):
    if path.endswith(".zst"):
        stream = zstandard.ZstdDecompressor().stream_reader(paths.path(path).open("rb"), read_across_frames=True)
        return io.BufferedReader(stream)
    return paths.path(path).open("rb")


def _raise(message: str):
    raise DataError(message)


def json_lines(paths, errors=_raise) -> Iterator[tuple[str, object]]:
    """("path:line", decoded value) for every non-blank line of .jsonl / .jsonl.zst files; a line that
    is not UTF-8 JSON goes to `errors` (default: raise DataError)."""
    for path in expand_paths(paths):
        try:
            with _open_lines(path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        errors(f"{path}:{lineno}: not a valid UTF-8 JSON line ({e.__class__.__name__})")
                        continue
                    yield f"{path}:{lineno}", record
        except Exception as e:  # zstandard raises its own error type for corrupt frames
            if isinstance(e, DataError) or e.__class__.__name__ != "ZstdError":
                raise
            raise DataError(f"{path} is not a valid zstandard file: {e}") from e


@registry.register("data_source", "jsonl")
def jsonl(paths, text_field: str = "text", meta_filter: dict | None = None,
          errors: ErrorPolicy = None) -> Iterator[str]:
    """JSON lines, plain or zstandard-compressed. meta_filter={"pile_set_name": ["Github"]} keeps
    records whose meta[key] is one of the values (a Pile subset)."""
    errors = errors or ErrorPolicy()
    for where, record in json_lines(paths, errors):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            errors(f"{where}: no string field {text_field!r} (set data.source_args.text_field)")
            continue
        if meta_filter and not all((record.get("meta") or {}).get(k) in v for k, v in meta_filter.items()):
            continue
        yield record[text_field]


def _python(value):
    """A TFDS numpy value as plain Python: bytes -> str (UTF-8), arrays -> lists, scalars -> int/float."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim:
        return [_python(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _tfds_numpy(name: str, split: str, data_dir: str | None, features: Iterable[str]) -> Iterator[dict]:
    tfds = require("tensorflow_datasets", "reading TFDS datasets", "tensorflow-datasets tensorflow-cpu")
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
    except Exception as e:
        raise DataError(f"cannot load TFDS dataset {name!r} split {split!r} from data_dir={data_dir!r}: {e}. "
                        "Prepare it there first (tfds build); neojax never downloads") from e
    for example in tfds.as_numpy(ds):
        missing = set(features) - set(example)
        if missing:
            raise DataError(f"TFDS {name} has no feature(s) {sorted(missing)}; features: {sorted(example)}")
        yield example


def tfds_records(name: str, split: str, data_dir: str | None = None, features: Iterable[str] = ()) -> Iterator[dict]:
    """The examples of a TFDS dataset already prepared in data_dir, as plain Python dicts.
    download=False: nothing is fetched at run time. `features` must all be present."""
    return map(_python, _tfds_numpy(name, split, data_dir, features))


@registry.register("data_source", "tfds")
def tfds_source(name: str, split: str = "train", feature: str = "text", data_dir: str | None = None,
                errors: ErrorPolicy = None) -> Iterator[str]:
    """A TFDS dataset prepared in data_dir (download=False: nothing is fetched at run time)."""
    errors = errors or ErrorPolicy()
    for example in _tfds_numpy(name, split, data_dir, [feature]):
        try:
            yield str(_python(example[feature]))
        except UnicodeDecodeError:
            errors(f"TFDS {name}: an example's {feature!r} is not valid UTF-8")


@registry.register("data_source", "stdlib")
def stdlib(max_bytes: int = 0, errors: ErrorPolicy = None) -> Iterator[str]:
    """The Python standard library's .py files (tests excluded), sorted: an offline corpus that
    every machine has. max_bytes > 0 stops after that much text."""
    total = 0
    for path in _stdlib_files(sysconfig.get_paths()["stdlib"]):
        text = _read_text(path, errors or ErrorPolicy("skip"))
        if not text or not text.strip():
            continue
        yield text
        total += len(text)
        if max_bytes and total >= max_bytes:
            return


@functools.lru_cache(maxsize=None)
def _stdlib_files(root: str) -> tuple:
    """The sorted .py files under root, without hidden names, site-packages and test folders or
    files: walked with those folders pruned (a glob of everything would read site-packages too,
    seconds on a machine with torch installed)."""
    def kept(path):
        return "site-packages" not in path and f"{os.sep}test" not in path[len(root):]

    found = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and kept(os.path.join(folder, d))]
        found += [os.path.join(folder, n) for n in names if n.endswith(".py") and not n.startswith(".")]
    return tuple(sorted(p for p in found if kept(p)))


def documents(source: str, source_args: dict, on_error: str = "raise") -> tuple[Iterator[str], ErrorPolicy]:
    """The documents of a registered source, with the error policy that counts skips."""
    fn = registry.get("data_source", source)
    policy = ErrorPolicy(on_error)
    try:
        return fn(**dict(source_args), errors=policy), policy
    except TypeError as e:
        raise ValueError(f"data source {source!r}: bad source_args {sorted(source_args)}: {e}") from e
