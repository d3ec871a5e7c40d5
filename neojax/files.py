"""Writes that never leave a half-written result where a good one (or nothing) was."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid


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
    usual_modes(tmp)
    old = None
    if os.path.exists(directory):
        old = f"{directory}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str, value, indent: int = 2) -> None:
    """Write JSON to `path` through a temporary file renamed into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(value if isinstance(value, str) else json.dumps(value, indent=indent))
    os.replace(tmp, path)


def usual_modes(directory: str) -> None:
    """Files as any program writes them (0644 under the usual umask): some writers use 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(directory):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
