"""A newcomer's first hour, as printed: the quickstart (smoke) trains, and every command its "Next:"
hint prints runs as printed (twice if it writes); every README command that names the quickstart's
workdir runs as written after it; the TensorBoard events it names are readable by TensorBoard."""
import os
import shlex
import subprocess
import sys

import pytest
from support import device_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = "/tmp/neojax-quickstart"  # the README's quickstart workdir

pytestmark = pytest.mark.slow  # a real training run and the commands after it (the fast subset: -m 'not slow')


def test_the_quickstart_hints_run_as_printed_twice(tmp_path):
    workdir = tmp_path / "quick start"  # a space: the hints must quote it
    env = device_env(1)  # one CPU device, as a newcomer's laptop
    run = lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    r = run([sys.executable, "-m", "neojax.train", "--config", "quickstart:smoke", "--workdir", str(workdir)])
    assert r.returncode == 0, r.stderr[-3000:]
    hints = r.stdout.split("Next:\n", 1)[1].splitlines()
    commands = [shlex.split(line) for line in hints if line.startswith("  python -m neojax.")]
    assert [c[2] for c in commands] == ["neojax.generate", "neojax.evaluate", "neojax.convert"], hints
    for argv in commands:  # twice where a run leaves something behind (generate runs again below, from the README)
        for attempt in (1,) if argv[2] == "neojax.generate" else (1, 2):
            r = run([sys.executable, *argv[1:]])
            assert r.returncode == 0, f"{argv} (run {attempt}): {r.stderr[-2000:]}"
    readme = open(os.path.join(ROOT, "README.md")).read()
    documented = [shlex.split(cell.strip("`")) for cell in readme.split(" | ") if QUICKSTART in cell
                  and cell.startswith("`python -m neojax.") and not cell.startswith("`python -m neojax.train")]
    assert [c[2] for c in documented] == ["neojax.generate", "neojax.convert"], documented
    for argv in documented:  # as written, the quickstart's workdir being this test's
        r = run([sys.executable, *[a.replace(QUICKSTART, str(workdir)) for a in argv[1:]]])
        assert r.returncode == 0, f"{argv}: {r.stderr[-2000:]}"
    curves = next(line for line in hints if line.startswith("Curves: tensorboard --logdir "))
    logdir = shlex.split(curves)[3]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # TensorBoard's own reader
    events = EventAccumulator(logdir)
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"] and len(events.Scalars("train/loss")) >= 2
