"""The sandbox that runs generated programs: hostile programs fail, harm nothing, and the run
finishes; without bubblewrap the limits still apply and a warning says what is not isolated."""
import math
import os
import socket
import subprocess
from pathlib import Path

import pytest

from neojax.evaluate import execution
from neojax.evaluate.code import pass_at_k


@pytest.mark.slow
def test_hostile_programs_fail_harm_nothing_and_the_run_finishes(tmp_path):
    sandbox = execution.find_sandbox("bwrap")  # CI installs bubblewrap (scripts/test_setup.sh): never skipped
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data.txt").write_text("precious")
    outside = tmp_path / "written.txt"  # under /tmp: the sandbox has a /tmp of its own
    beside = Path(os.__file__).with_name(f"escaped-{os.getpid()}.txt")  # beside the standard library: read-only
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    child = subprocess.Popen(["sleep", "600"])  # a process of ours that a program might try to signal
    try:
        # posix.* is the os module's C core: calls the guard does not disable, so only the sandbox stops them
        hostile = {
            "write outside": f"import posix\nfd = posix.open({str(outside)!r}, posix.O_CREAT | posix.O_WRONLY)\n"
                             f"posix.write(fd, b'x')\nfd = posix.open({str(keep / 'data.txt')!r}, posix.O_TRUNC | "
                             "posix.O_WRONLY)",
            "write beside the library": f"import posix\nposix.open({str(beside)!r}, posix.O_CREAT | posix.O_WRONLY)",
            "remove a folder": f"import posix\nposix.unlink({str(keep / 'data.txt')!r})\nposix.rmdir({str(keep)!r})",
            "open a socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
            "kill the parent": f"import posix\nposix.kill({os.getpid()}, 9)\nposix.kill({child.pid}, 9)\n"
                               "posix.kill(-1, 9)",
            "fork many": "import posix\nwhile True:\n    posix.fork()",
            "allocate gigabytes": "b = bytearray(16 * 2**30)",
            "loop forever": "while True:\n    pass",
            "loop in C": "sum(range(10**13))",
            "ignore the alarm": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
            "a huge file": "open('big', 'wb').write(b'x' * 2**30)",
        }
        programs = ["assert sorted([3, 1, 2]) == [1, 2, 3]", *hostile.values(),
                    "import math\nassert math.gcd(12, 18) == 6"]
        outcomes = execution.execute(programs, timeout=1.0, workers=2, sandbox=sandbox)
        assert [o.passed for o in outcomes] == [True] + [False] * len(hostile) + [True]
        said = dict(zip(hostile, (o.result for o in outcomes[1:])))
        assert "Read-only file system" in said["write beside the library"]
        assert said["loop forever"] == said["loop in C"] == said["ignore the alarm"] == "timed out"
        assert said["allocate gigabytes"].startswith("failed")
        assert not outside.exists() and not beside.exists() and (keep / "data.txt").read_text() == "precious"
        with pytest.raises(socket.timeout):
            listener.accept()
        assert child.poll() is None  # still running: nothing in the sandbox could reach it
    finally:  # every process and socket this test opened ends with it, whatever failed
        child.kill()
        child.wait()
        listener.close()


def test_without_a_sandbox_limits_apply_and_a_warning_says_what_is_not_isolated(capsys):
    sandbox = execution.find_sandbox("none")
    outcomes = execution.execute(["assert 1 + 1 == 2", "raise ValueError('no')", "while True:\n    pass"],
                                 timeout=0.5, workers=2, sandbox=sandbox)
    assert [(o.passed, o.result) for o in outcomes] == [(True, "passed"), (False, "failed: no"),
                                                        (False, "timed out")]
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning.startswith("warning: running generated programs without a sandbox (no sandbox was asked for)")
    assert "read and write your files, reach the network" in warning


def test_pass_at_k_is_the_unbiased_estimator_in_exact_arithmetic():
    for n, c, k in [(200, 0, 1), (200, 3, 1), (200, 3, 10), (200, 3, 100), (200, 199, 100), (10, 5, 10), (1, 1, 1),
                    (64, 17, 8), (200, 1, 200)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-15)
