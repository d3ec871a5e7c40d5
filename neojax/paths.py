"""Every path neojax reads or writes: local, gs:// and s3://, as one kind of object.

    from neojax import paths
    wd = paths.path("gs://bucket/run1")      # an etils.epath.Path (the library orbax writes through)
    (wd / "config.json").write_text(...)      # local, Google Cloud Storage or S3 alike

Object storage goes through fsspec (gcsfs, s3fs) and, for checkpoint arrays, tensorstore. The
standard variables select a server: `STORAGE_EMULATOR_HOST` for GCS (handed on here to
tensorstore, which has its own), `AWS_ENDPOINT_URL` and the usual key variables for S3, so the same
command runs against the real services and the emulators the tests start. Object stores have no
append, no rename and no file lock: writers here write whole objects, and a directory is published
by uploading its marker file last.
"""
from __future__ import annotations

import contextlib
import glob as pyglob
import logging
import os
import shutil
import stat
import tempfile
import time
from typing import Iterator, Optional, Union

# etils picks TensorFlow's gfile for gs:// whenever TensorFlow is installed; gfile has no s3 and
# ignores the emulator variables, so neojax (and the orbax it drives) use fsspec everywhere.
os.environ.setdefault("EPATH_USE_TF", "false")

import fsspec  # noqa: E402
from etils import epath  # noqa: E402  (after the backend choice above)

from neojax.errors import UsageError  # noqa: E402

REMOTE = ("gs", "s3")
PathLike = Union[str, os.PathLike]


def scheme(p: PathLike) -> str:
    """'gs', 's3', or '' for a local path; a UsageError for any other scheme."""
    text = os.fspath(p)
    head, sep, _ = text.partition("://")
    if not sep:
        return ""
    if head not in REMOTE:
        raise UsageError(f"{text}: neojax cannot read or write {head}:// paths; use a local path, gs://BUCKET/... "
                         "or s3://BUCKET/...")
    return head


def is_remote(p: PathLike) -> bool:
    return bool(scheme(p))


def exists(p: PathLike) -> bool:
    """Whether `p` (a file or directory, `~` expanded locally) exists."""
    return path(p).exists()


def is_dir(p: PathLike) -> bool:
    return path(p).is_dir()


def path(p: PathLike) -> epath.Path:
    """The path object for `p` (local paths made absolute), its scheme checked and its server configured."""
    if isinstance(p, epath.Path) and not isinstance(p, str):
        return p
    kind = scheme(p)
    if kind:
        _configure(kind)
        return epath.Path(os.fspath(p).rstrip("/"))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def _configure(kind: str) -> None:
    """Hand the standard emulator variable on to the layers that read their own, and turn off
    fsspec's listing cache: other processes (the hosts of a run) write here too."""
    for protocol in ("gs", "gcs", "s3"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if kind == "gs" and host:
        url = host if "://" in host else f"http://{host}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)  # orbax's array writes (tensorstore)
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # emulators check no token
        logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "could not determine bucket type": no real GCS


def forget_servers() -> None:
    """Drop the filesystems fsspec and epath keep per scheme (they hold the server they first met):
    for a process that talks to another server afterwards, as the tests do."""
    from etils.epath import backend  # deferred: epath's cache of one filesystem per scheme
    backend.fsspec_backend._get_filesystem.cache_clear()
    for kind in REMOTE:
        fsspec.get_filesystem_class(kind).clear_instance_cache()


def orbax_native(p: PathLike) -> bool:
    """Whether orbax writes checkpoint arrays at `p` itself: local and gs:// (tensorstore's gcs driver).
    orbax 0.12 builds no tensorstore spec for s3://, so those checkpoints are staged (see staged_dir)."""
    return scheme(p) in ("", "gs")


def glob(pattern: str) -> list[str]:
    """The files matching `pattern` (`**` recurses), sorted; remote patterns as remote paths."""
    kind = scheme(pattern)
    if not kind:
        found = pyglob.glob(os.path.expanduser(pattern), recursive=True)
        return sorted(f for f in found if os.path.isfile(f))
    path(pattern)  # configures the server
    fs = fsspec.filesystem(kind)
    return sorted(f"{kind}://{f}" for f in fs.glob(pattern) if fs.isfile(f))


def fingerprint(p: PathLike) -> tuple[str, int, int]:
    """(path, size, modification time) of a file: edited input means new derived data."""
    if not is_remote(p):
        return os.fspath(p), os.path.getsize(p), int(os.path.getmtime(p))
    info = path(p).stat()
    return os.fspath(p), int(info.length), int(info.mtime or 0)


def wait_for(p: PathLike, what: str, poll: float = 0.5) -> None:
    """Block until `p` exists (another process is writing it; `what` names that for tracebacks). A
    peer that dies meanwhile ends this process through jax.distributed's heartbeat, so there is no
    timeout of its own here."""
    target = path(p)
    while not target.exists():
        time.sleep(poll)


def write_text(p: PathLike, text: str) -> None:
    """Write `text` whole (see write_bytes)."""
    write_bytes(p, text.encode("utf-8"))


def write_bytes(p: PathLike, data: bytes) -> None:
    """Write `data` whole: through a renamed temporary file locally, as one object remotely (a PUT
    replaces an object atomically), so a reader never sees half of it. A symlink is written through
    to its target, as a shell's `>` does (the link stays); anything but a regular file (a device, a
    FIFO, a socket, a folder) is refused with a ValueError, never replaced."""
    target = path(p)
    if is_remote(target):
        target.write_bytes(data)
        return
    problem = output_problem(target)
    if problem:
        raise ValueError(f"{os.fspath(p)} {problem}")
    real = path(os.path.realpath(target)) if os.path.islink(target) else target
    tmp = real.parent / f".{real.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, real)


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_folder(p: PathLike) -> Optional[str]:
    """Why local path `p` (or a symlink's target) cannot be written as a folder: it exists and is
    something else ("is a regular file, not a folder"). None: absent, or a folder."""
    local = os.path.realpath(os.path.expanduser(os.fspath(p)))
    if os.path.exists(local) and not os.path.isdir(local):
        return f"is {kind_of(os.stat(local).st_mode)}, not a folder"
    return None


def output_problem(p: PathLike) -> Optional[str]:
    """Why a file cannot be written whole at local path `p` (None: it can; object storage: always can):
    `p`, or a symlink's target, exists and is not a regular file, or its directory is missing or
    not writable. Worded to follow the path."""
    if is_remote(p):
        return None
    local = os.path.expanduser(os.fspath(p))
    if os.path.islink(local):
        local = os.path.realpath(local)
        link = f" (a symlink to {local})"
    else:
        link = ""
    if os.path.exists(local):
        mode = os.stat(local).st_mode
        if stat.S_ISDIR(mode):
            return f"is a directory{link}; give a file name"
        if not stat.S_ISREG(mode):
            return (f"is {kind_of(mode)}{link}, not a regular file; outputs are written whole (a temporary file "
                    "renamed), so give a file name")
    directory = os.path.dirname(os.path.abspath(local))
    if not os.path.isdir(directory):
        return f"{link.strip() + ': ' if link else ''}directory {directory} does not exist; create it first"
    if not os.access(directory, os.W_OK) or (os.path.exists(local) and not os.access(local, os.W_OK)):
        return f"cannot be written{link} (permissions); choose another path"
    return None


def read_range(p: PathLike, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file: one ranged read on object storage."""
    if not is_remote(p):
        with open(p, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    return fsspec.filesystem(scheme(p)).cat_file(os.fspath(p), start=start, end=end)


def upload_tree(local: PathLike, remote: PathLike, last: tuple[str, ...] = ()) -> None:
    """Copy the local directory `local` to `remote`, the files named in `last` (markers whose
    presence says the directory is complete) after every other file."""
    local, remote = os.fspath(local), path(remote)
    files = []
    for root, _, names in os.walk(local):
        files += [os.path.relpath(os.path.join(root, n), local) for n in names]
    files.sort(key=lambda rel: (rel in last, rel))
    for rel in files:
        target = remote / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(os.path.join(local, rel), "rb").read())


def download_tree(remote: PathLike, local: PathLike) -> None:
    """Copy every object under `remote` into the local directory `local`."""
    remote, local = path(remote), os.fspath(local)
    for item in _walk(remote):
        rel = os.fspath(item)[len(os.fspath(remote)) + 1:]
        os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
        with open(os.path.join(local, rel), "wb") as f:
            f.write(item.read_bytes())


def _walk(p: epath.Path) -> Iterator[epath.Path]:
    for child in p.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


def move_tree(src: PathLike, dst: PathLike) -> None:
    """Move a directory: a rename locally, a copy then a delete on object storage (no rename there)."""
    src, dst = path(src), path(dst)
    if not is_remote(src):
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        return
    for item in _walk(src):
        target = dst / os.fspath(item)[len(os.fspath(src)) + 1:]
        target.write_bytes(item.read_bytes())
    remove_tree(src)


def remove_tree(p: PathLike) -> None:
    target = path(p)
    if target.exists():
        target.rmtree() if target.is_dir() else target.unlink()


@contextlib.contextmanager
def local_copy(p: PathLike, only: Optional[tuple[str, ...]] = None) -> Iterator[str]:
    """A local path holding what `p` holds (itself when local; a temporary download otherwise, of
    the children named in `only` if given), for libraries that read real files."""
    if not is_remote(p):
        yield os.fspath(path(p))
        return
    src = path(p)
    with tempfile.TemporaryDirectory(prefix="neojax-") as tmp:
        local = os.path.join(tmp, src.name)
        if src.is_dir():
            for child in [src / name for name in only] if only else [src]:
                download_tree(child, local if child == src else os.path.join(local, child.name))
        else:
            with open(local, "wb") as f:
                f.write(src.read_bytes())
        yield local


@contextlib.contextmanager
def local_file(p: PathLike) -> Iterator[str]:
    """A local file name to write (a chart, a report): what the block writes there is written whole
    to `p` when the block succeeds (write_bytes: a symlink written through, a device refused)."""
    with tempfile.TemporaryDirectory(prefix="neojax-") as tmp:
        local = os.path.join(tmp, path(p).name)
        yield local
        write_bytes(p, open(local, "rb").read())


@contextlib.contextmanager
def staged_dir(p: PathLike, last: tuple[str, ...] = ()) -> Iterator[str]:
    """A local directory whose files are written to `p` when the block succeeds (`p` itself when
    local), markers in `last` uploaded last."""
    if not is_remote(p):
        os.makedirs(path(p), exist_ok=True)
        yield os.fspath(path(p))
        return
    tmp = tempfile.mkdtemp(prefix="neojax-stage-")
    try:
        yield tmp
        upload_tree(tmp, p, last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
