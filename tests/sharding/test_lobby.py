"""A pod launch that goes wrong is one line in seconds (neojax.sharding.lobby): every case is started
at once, as real processes on loopback ports, and checked for its exit code and its line."""
import select
import signal
import subprocess
import sys
import time

import pytest
from support import device_env, free_port

from neojax.sharding.hosts import check_launch

CODE = """
import sys
import jax
from neojax import cli
from neojax.sharding import initialize_distributed

def main(argv):
    initialize_distributed(argv[0], int(argv[1]), int(argv[2]))
    print(f"up {jax.process_index()} of {jax.process_count()}", flush=True)
    return 0

sys.exit(cli.run(main, sys.argv[1:]))
"""


def _start(port, count, pid, wait_s=60):
    env = device_env(1, NEOJAX_PEER_WAIT_S=str(wait_s))
    return subprocess.Popen([sys.executable, "-c", CODE, f"127.0.0.1:{port}", str(count), str(pid)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _line(proc, words, timeout=60):
    """The first line of proc's stderr holding `words` (read as it comes, within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        line = proc.stderr.readline() if ready else ""
        if words in line:
            return line
    raise AssertionError(f"{words!r} not said within {timeout} s")


def _lines(proc):
    """(exit code, stdout lines, stderr lines without gloo's)."""
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.splitlines(), [line for line in err.splitlines() if "Gloo" not in line]


@pytest.mark.slow
def test_launches_that_go_wrong_say_so_in_seconds_and_one_that_is_right_starts():
    ports = {case: free_port() for case in ("late", "count", "twice", "alone", "term")}
    procs = {"late": [_start(ports["late"], 2, 1)],  # process 1 first: it waits for the coordinator
             "count": [_start(ports["count"], 2, 0), _start(ports["count"], 3, 1)],
             "twice": [_start(ports["twice"], 3, 0), _start(ports["twice"], 3, 2)],
             "alone": [_start(ports["alone"], 3, 0, wait_s=4)],
             "term": [_start(ports["term"], 2, 1)]}
    try:
        said = _line(procs["late"][0], "waiting for process 0")  # said within seconds, while it waits
        procs["late"].append(_start(ports["late"], 2, 0))  # process 0 comes late (minutes, on a pod)
        time.sleep(2)
        procs["twice"].append(_start(ports["twice"], 3, 2))
        procs["term"][0].send_signal(signal.SIGTERM)
        started = time.monotonic()
        late = [_lines(p) for p in procs["late"]]
        assert [code for code, _, _ in late] == [0, 0] and late[0][1] == ["up 1 of 2"] and late[1][1] == ["up 0 of 2"]
        assert said.startswith(f"process 1: waiting for process 0 (the coordinator) at 127.0.0.1:{ports['late']}")

        for code, _, err in map(_lines, procs["count"]):  # both named, both sides' counts
            assert code == 2 and err[-1] == ("error: process 1 (at 127.0.0.1) was started with --num_processes 3 "
                                             "and process 0 with 2: give every process the same count")
        for code, _, err in map(_lines, procs["twice"]):  # (process 0 may have said it waits, first)
            assert code == 2 and "two processes were given --process_id 2" in err[-1]
            assert all(" waiting for " in line for line in err[:-1])
        code, _, err = _lines(procs["alone"][0])
        assert code == 75 and err[-1].startswith(f"error: process 0: processes [1, 2] of 3 never connected to "
                                                 f"127.0.0.1:{ports['alone']} within 4 s")
        assert err[0].startswith("process 0: waiting for processes [1, 2] of 3")  # said while it waited
        code, _, err = _lines(procs["term"][0])
        assert code == -signal.SIGTERM  # a waiting process ends on SIGTERM
        assert time.monotonic() - started < 60
    finally:  # every process started ends, whatever failed
        for proc in (p for group in procs.values() for p in group):
            proc.kill()


@pytest.mark.parametrize("flags,expect", [
    (("10.0.0.2", 2, 0), "--coordinator 10.0.0.2: give host:port"),
    (("10.0.0.2:http", 2, 0), "give host:port"),
    (("10.0.0.2:99999", 2, 0), "give host:port"),
    ((None, 2, 0), "--num_processes 2 needs --coordinator"),
    (("h:1234", None, 0), "needs --num_processes"),
    (("h:1234", 2, None), "needs --process_id I (this process's index, 0 to 1)"),
    (("h:1234", 2, 2), "--process_id 2 is outside 0..1"),
])
def test_launch_flags_are_checked_before_anything_starts(flags, expect):
    from neojax.errors import UsageError
    with pytest.raises(UsageError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        check_launch(*flags)
