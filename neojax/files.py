"""Writes that never leave a half-written result where a good one (or nothing) was, locally and on
object storage (gs://, s3://; see neojax.paths)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid

from neojax import paths

# Files whose presence says a directory is complete (neojax model, Hugging Face model, token cache):
# on object storage they are uploaded after everything else.
MARKERS = ("neojax.json", "config.json", "meta.json")


@contextlib.contextmanager
def atomic_directory(directory: str, overwrite: bool = False):
    """Yield a local temporary directory; it replaces `directory` only once the block succeeds, so a
    crash never leaves a half-written model where a good one (or nothing) was. A symlink to a folder
    is written through (the link stays and points at the new folder); a path that is not a folder is
    refused. On object storage (no rename) the files are uploaded once the block succeeds, the
    marker files last."""
    if not paths.is_remote(directory) and os.path.islink(directory):
        directory = os.path.realpath(directory)  # written through: the link stays, its folder is replaced
    target = paths.path(directory)
    problem = None if paths.is_remote(directory) else paths.not_a_folder(directory)
    if problem:
        raise NotADirectoryError(f"{directory} {problem}; choose another destination")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} already exists and is not empty; choose another destination "
                              "or pass overwrite=True (--overwrite)")
    if paths.is_remote(directory):
        tmp = tempfile.mkdtemp(prefix="neojax-stage-")
        try:
            yield tmp
            usual_modes(tmp)
            paths.remove_tree(directory)
            paths.upload_tree(tmp, directory, last=MARKERS)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    directory = os.fspath(target)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    usual_modes(tmp)
    old = None
    if os.path.exists(directory):
        old = f"{directory}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str, value, indent: int = 2) -> None:
    """Write JSON to `path` whole (see paths.write_text)."""
    paths.write_text(path, value if isinstance(value, str) else json.dumps(value, indent=indent))


def usual_modes(directory: str) -> None:
    """Files as any program writes them (0644 under the usual umask): some writers use 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(directory):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
