"""Outputs never replace what they should not: one table of path kinds for the file helper
(paths.write_bytes, cli.writable_output) and one for the folder helper (files.atomic_directory,
cli.writable_folder). A symlink is written through to its target, as a shell's `>` does; a device,
FIFO, socket or a folder where a file is expected is refused in one line and left as it was."""
import os
import re
import socket
import stat

import pytest

from neojax import cli, paths
from neojax.files import atomic_directory


def _make(kind: str, tmp_path) -> str:
    """A path of this kind in tmp_path (what a user might give as an output)."""
    path = tmp_path / "out.json"
    if kind == "regular file":
        path.write_text("old")
    elif kind == "symlink to a file":
        (tmp_path / "target.json").write_text("old")
        path.symlink_to(tmp_path / "target.json")
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "target.json")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink to a directory":
        (tmp_path / "folder").mkdir()
        path.symlink_to(tmp_path / "folder")
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "socket":
        path = tmp_path / "s"  # AF_UNIX paths are short
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "character device":
        return "/dev/null"
    elif kind == "symlink to a character device":
        path.symlink_to("/dev/null")
    elif kind == "missing directory":
        path = tmp_path / "none" / "out.json"
    return str(path)


FILES = [  # kind, refused with (None: written)
    ("absent", None),
    ("regular file", None),
    ("symlink to a file", None),
    ("dangling symlink", None),
    ("directory", "is a directory"),
    ("symlink to a directory", "is a directory (a symlink to"),
    ("FIFO", "is a FIFO, not a regular file"),
    ("socket", "is a socket, not a regular file"),
    ("character device", "is a character device, not a regular file"),
    ("symlink to a character device", "is a character device (a symlink to /dev/null)"),
    ("missing directory", "does not exist; create it first"),
]


@pytest.mark.parametrize("kind,refused", FILES, ids=[k for k, _ in FILES])
def test_a_file_output_is_written_whole_or_refused_in_one_line(kind, refused, tmp_path):
    path = _make(kind, tmp_path)
    before = os.lstat(path) if os.path.lexists(path) else None
    if refused:
        with pytest.raises(cli.UsageError, match="^--output .*" + re.escape(refused)) as e:
            cli.writable_output("--output", path)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match=re.escape(refused)):
            paths.write_bytes(path, b"new")
        if before is not None:  # left exactly as it was: same inode, same kind
            after = os.lstat(path)
            assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
        return
    assert cli.writable_output("--output", path) == path
    paths.write_bytes(path, b"new")
    assert open(path, "rb").read() == b"new"
    if "symlink" in kind:  # written through: the link stays a link, its target holds the text
        assert os.path.islink(path) and open(tmp_path / "target.json", "rb").read() == b"new"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temporary file left


def test_a_chart_is_written_through_the_same_helper(tmp_path):
    with pytest.raises(ValueError, match="is a FIFO"):
        os.mkfifo(tmp_path / "chart.png")
        with paths.local_file(str(tmp_path / "chart.png")) as local:
            open(local, "wb").write(b"png")
    (tmp_path / "real.png").write_bytes(b"")
    os.symlink(tmp_path / "real.png", tmp_path / "link.png")
    with paths.local_file(str(tmp_path / "link.png")) as local:
        open(local, "wb").write(b"png")
    assert os.path.islink(tmp_path / "link.png") and (tmp_path / "real.png").read_bytes() == b"png"


FOLDERS = [  # kind, refused with (None: written)
    ("absent", None),
    ("directory", None),  # empty: written without --overwrite
    ("symlink to a directory", None),
    ("regular file", "not a folder"),
    ("FIFO", "is a FIFO, not a folder"),
    ("character device", "is a character device, not a folder"),
]


@pytest.mark.parametrize("kind,refused", FOLDERS, ids=[k for k, _ in FOLDERS])
def test_a_folder_output_replaces_only_a_folder(kind, refused, tmp_path):
    path = _make(kind, tmp_path)
    if refused:
        with pytest.raises(cli.UsageError, match=refused):
            cli.writable_folder("DST", path, overwrite=True)
        with pytest.raises(NotADirectoryError, match=refused):
            with atomic_directory(path, overwrite=True):
                pass
        assert os.path.lexists(path) and not os.path.isdir(path)
        return
    assert cli.writable_folder("DST", path) == path
    for round_ in ("first", "second"):  # the second replaces the first (overwrite)
        with atomic_directory(path, overwrite=True) as tmp:
            open(os.path.join(tmp, "model.json"), "w").write(round_)
        assert open(os.path.join(path, "model.json")).read() == round_
    if kind == "symlink to a directory":  # the link stays and points at the new folder
        assert os.path.islink(path) and open(tmp_path / "folder" / "model.json").read() == "second"
    assert not [n for n in os.listdir(tmp_path) if ".old-" in n or ".tmp-" in n]  # nothing dangling left
    with pytest.raises(cli.UsageError, match="already exists and is not empty"):
        cli.writable_folder("DST", path)
