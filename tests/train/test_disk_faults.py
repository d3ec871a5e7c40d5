"""Disk faults a run meets, each ending with nothing lost and the run resumable to the weights of
an uninterrupted run: a checkpoint this user may not read (not "damaged": nothing is moved), a
zero-byte file in a checkpoint (set aside without traceback spam), a lost config.json, and a full
disk (one line at the save that failed; the last good checkpoint intact)."""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from resume_case import TOTAL, config, losses, params, same, state_data_files

from neojax.cli import UsageError
from neojax.train.loop import train

WORKER = str(Path(__file__).resolve().parents[1] / "_train_worker.py")


def _run(corpus, tokenizer, workdir, prefix=(), total=TOTAL, *extra):
    """The run in its own process, optionally under `prefix` (setpriv, unshare)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(WORKER).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([*prefix, sys.executable, WORKER, corpus, tokenizer.source, workdir, str(total), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:  # the run is a grandchild under unshare's shell: end the whole group, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _without_root_file_access():
    """As root, permission bits bind only without CAP_DAC_OVERRIDE: drop it for the child."""
    if os.geteuid() != 0:
        return []
    assert shutil.which("setpriv"), "setpriv (util-linux) drops root's file-access override"
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.slow
def test_an_unreadable_checkpoint_is_named_not_set_aside(stopped_at_6, uninterrupted, corpus, tiny_tokenizer):
    blocked = Path(stopped_at_6, "checkpoints", "6", "state", "_METADATA")
    blocked.chmod(0)
    try:
        r = _run(corpus, tiny_tokenizer, stopped_at_6, _without_root_file_access())
    finally:
        blocked.chmod(0o644)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: checkpoint {stopped_at_6}/checkpoints/6 cannot be read: {blocked} "
                               "(Permission denied)") and r.stderr.count("\n") == 1, r.stderr
    assert not Path(stopped_at_6, "damaged_checkpoints").exists()  # not moved, not "damaged"
    train(config(corpus, tiny_tokenizer), stopped_at_6)  # readable again: resumes from step 6
    assert same(params(stopped_at_6), params(uninterrupted)) and losses(stopped_at_6) == losses(uninterrupted)


@pytest.mark.slow
def test_a_zero_byte_file_is_set_aside_in_one_line(stopped_at_6, uninterrupted, corpus, tiny_tokenizer):
    for file in state_data_files(Path(stopped_at_6, "checkpoints", "6")):
        Path(file).write_bytes(b"")
    r = _run(corpus, tiny_tokenizer, stopped_at_6)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint" in r.stderr and "is damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len([line for line in r.stderr.splitlines() if line.strip()]) <= 3, r.stderr[-3000:]
    assert same(params(stopped_at_6), params(uninterrupted)) and losses(stopped_at_6) == losses(uninterrupted)


@pytest.mark.slow
def test_a_lost_config_is_refused_unless_adopted(stopped_at_6, uninterrupted, corpus, tiny_tokenizer):
    os.remove(os.path.join(stopped_at_6, "config.json"))
    with pytest.raises(UsageError, match="has checkpoints but no config.json.*--adopt_config"):
        train(config(corpus, tiny_tokenizer), stopped_at_6)
    with pytest.raises(UsageError, match="--adopt_config: .* has no checkpoints"):
        train(config(corpus, tiny_tokenizer), os.path.join(stopped_at_6, "elsewhere"), adopt_config=True)
    train(config(corpus, tiny_tokenizer), stopped_at_6, adopt_config=True)
    assert same(params(stopped_at_6), params(uninterrupted))
    with pytest.raises(UsageError, match="--adopt_config: .* has its config.json"):
        train(config(corpus, tiny_tokenizer), stopped_at_6, adopt_config=True)


def _on_a_full_disk(first, keep):
    """A prefix that runs the command with /mnt/small a fresh tmpfs (a private mount namespace:
    nothing leaks to the machine) holding a copy of the run `first`, then filled to leave 300 KB
    (less than any checkpoint: orbax's file sizes vary run to run, so no fixed disk size fails at
    the same save), and, when it ends, copies the workdir to `keep`."""
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    if subprocess.run([*unshare, "true"], capture_output=True).returncode:
        pytest.skip("this machine allows no private mount namespace (unshare -m) to hold a small disk")
    script = (f'mount -t tmpfs -o size=16m tmpfs "$0" && cp -a {first} "$0/run" && '
              'dd if=/dev/zero of="$0/filler" bs=1k count=$(($(df -k --output=avail "$0" | tail -1) - 300)) '
              f'2>/dev/null && "$@"; rc=$?; cp -a "$0/run" {keep}; exit $rc')
    return lambda mnt: [*unshare, "sh", "-c", script, mnt]


@pytest.mark.slow
@pytest.mark.parametrize("estimate", [True, False], ids=["before-the-save", "the-save-fails"])
def test_a_full_disk_is_one_line_and_the_last_checkpoint_resumes(estimate, uninterrupted, corpus, tiny_tokenizer,
                                                                   tmp_path):
    """Checkpoint 6 does not fit on a disk filled after checkpoint 3: known before writing (the
    estimate), or met by the save itself.
    Either way one line names the workdir and the space, checkpoint 3 is intact, and on a disk
    with room the run resumes to the uninterrupted run's weights."""
    mnt, first, kept = tmp_path / "small", tmp_path / "first", tmp_path / "kept"
    mnt.mkdir()
    train(config(corpus, tiny_tokenizer, total=3), str(first))  # total_steps may grow on resume
    prefix = _on_a_full_disk(first, kept)(str(mnt))
    r = _run(corpus, tiny_tokenizer, str(mnt / "run"), prefix, TOTAL, *([] if estimate else ["no-estimate"]))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.splitlines()) < 10, r.stderr[-3000:]  # the tokeniser's progress, then the one line
    said = "the disk has .* MB free, a checkpoint needs about .* MB" if estimate else "no space left on its disk"
    failed = re.match(f"error: --workdir {mnt}/run: checkpoint (\\d+): {said}.*resumes from checkpoint (\\d+), "
                      "which is intact", errors[0])
    assert failed and (failed[1], failed[2]) == ("6", "3"), errors[0]
    assert os.listdir(kept / "checkpoints") == ["3"]  # the partial save was removed
    train(config(corpus, tiny_tokenizer), str(kept))  # room again: the same command resumes
    assert same(params(str(kept)), params(uninterrupted)) and losses(str(kept)) == losses(uninterrupted)
