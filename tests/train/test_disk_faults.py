"""Disk faults a run meets, each ending with nothing lost and the run resumable to the weights of
an uninterrupted run: a checkpoint this user may not read (not "damaged": nothing is moved), a
zero-byte file in a checkpoint (set aside without traceback spam), a lost config.json, and a full
disk (one line at the save that failed; the last good checkpoint intact)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from resume_case import TOTAL, config, losses, params, same

from neojax.cli import UsageError
from neojax.train.loop import train

WORKER = str(Path(__file__).resolve().parents[1] / "_train_worker.py")


def _run(corpus, tokenizer, workdir, prefix=(), total=TOTAL):
    """The run in its own process, optionally under `prefix` (setpriv, unshare)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(WORKER).parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*prefix, sys.executable, WORKER, corpus, tokenizer.source, workdir, str(total)],
                          capture_output=True, text=True, timeout=600, env=env)


def _without_root_file_access():
    """As root, permission bits bind only without CAP_DAC_OVERRIDE: drop it for the child."""
    if os.geteuid() != 0:
        return []
    assert shutil.which("setpriv"), "setpriv (util-linux) drops root's file-access override"
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_an_unreadable_checkpoint_is_named_not_set_aside(stopped_at_6, reference, corpus, tiny_tokenizer):
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
    assert same(params(stopped_at_6), params(reference)) and losses(stopped_at_6) == losses(reference)


def test_a_zero_byte_file_is_set_aside_in_one_line(stopped_at_6, reference, corpus, tiny_tokenizer):
    files = sorted(Path(stopped_at_6, "checkpoints", "6", "state", "ocdbt.process_0", "d").iterdir())
    files[0].write_bytes(b"")
    r = _run(corpus, tiny_tokenizer, stopped_at_6)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint" in r.stderr and "is damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len([line for line in r.stderr.splitlines() if line.strip()]) <= 3, r.stderr[-3000:]
    assert same(params(stopped_at_6), params(reference)) and losses(stopped_at_6) == losses(reference)


def test_a_lost_config_is_refused_unless_adopted(stopped_at_6, reference, corpus, tiny_tokenizer):
    os.remove(os.path.join(stopped_at_6, "config.json"))
    with pytest.raises(UsageError, match="has checkpoints but no config.json.*--adopt_config"):
        train(config(corpus, tiny_tokenizer), stopped_at_6)
    with pytest.raises(UsageError, match="--adopt_config: .* has no checkpoints"):
        train(config(corpus, tiny_tokenizer), os.path.join(stopped_at_6, "elsewhere"), adopt_config=True)
    train(config(corpus, tiny_tokenizer), stopped_at_6, adopt_config=True)
    assert same(params(stopped_at_6), params(reference))
    with pytest.raises(UsageError, match="--adopt_config: .* has its config.json"):
        train(config(corpus, tiny_tokenizer), stopped_at_6, adopt_config=True)
