"""Before jax.distributed starts, the processes of a run meet in a lobby on the coordinator's port:
each says who it thinks it is (its process id and the process count), process 0 checks that the
views agree, and only then does every process start JAX's coordination service. So a launch that
goes wrong is one line in seconds instead of a silent 300 s wait or a C++ check failure:

- a process waiting says so within seconds and then every WAIT_EVERY_S seconds, naming the address
  and (process 0) which process ids have not come yet; hosts that arrive minutes apart still start;
- a wait longer than NEOJAX_PEER_WAIT_S (default 600 s) ends in one line naming what never came
  (exit LOST_EXIT, 75: re-run when the hosts are up);
- two processes with the same --process_id, or different --num_processes, are named at once (exit 2);
- a waiting process ends on SIGTERM or Ctrl-C (it waits in Python, with timeouts).
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time
from typing import Callable, Optional

from neojax.errors import UsageError

LOST_EXIT = 75  # EX_TEMPFAIL: the run stopped for a reason outside it; re-running resumes
FIRST_SAY_S = 3.0  # a process that has waited this long says what it waits for
WAIT_EVERY_S = 30.0  # and then again this often
DEFAULT_WAIT_S = 600.0


def address(coordinator: str) -> tuple[str, int]:
    """(host, port) of a host:port (a bracketed IPv6 host too), or a UsageError."""
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {coordinator}: give host:port (e.g. 10.0.0.2:1234), the same on every "
                         "process, with a port process 0 can listen on")
    return host.strip("[]"), int(port)


def wait_limit() -> float:
    """Seconds a process waits for the others (NEOJAX_PEER_WAIT_S, default 600)."""
    text = os.environ.get("NEOJAX_PEER_WAIT_S", str(DEFAULT_WAIT_S))
    try:
        limit = float(text)
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise UsageError(f"NEOJAX_PEER_WAIT_S={text!r}: give the seconds a process waits for the others (e.g. 600)")
    return limit


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Clock:
    """When to say that a process is still waiting, and when its wait is over."""

    def __init__(self, limit: float):
        self.start, self.limit, self.next_say = time.monotonic(), limit, FIRST_SAY_S

    def waited(self) -> float:
        return time.monotonic() - self.start

    def say_now(self) -> bool:
        if self.waited() < self.next_say:
            return False
        self.next_say = self.waited() + WAIT_EVERY_S
        return True

    def over(self) -> bool:
        return self.waited() > self.limit


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _patience(seconds: int) -> Callable[[], None]:
    """A waiting() for _receive that gives up (TimeoutError) after `seconds`."""
    left = [seconds]

    def wait() -> None:
        left[0] -= 1
        if left[0] < 0:
            raise TimeoutError("no answer")
    return wait


def _receive(conn: socket.socket, waiting: Callable[[], None]) -> Optional[dict]:
    """One JSON line from `conn` (None: it closed), calling waiting() each second it does not come."""
    data = b""
    conn.settimeout(1.0)
    while not data.endswith(b"\n"):
        try:
            piece = conn.recv(4096)
        except socket.timeout:
            waiting()
            continue
        if not piece:
            return None
        data += piece
    return json.loads(data)


def meet(coordinator: str, num_processes: int, process_id: int) -> None:
    """Return once every process of the run has arrived with the same view (see the module doc)."""
    host, port = address(coordinator)
    clock = _Clock(wait_limit())
    if process_id == 0:
        _host(host, port, num_processes, clock, coordinator)
    else:
        _join(host, port, num_processes, process_id, clock, coordinator)


def _host(host: str, port: int, count: int, clock: _Clock, coordinator: str) -> None:
    """Process 0: accept the others until all have come, each checked against this process's view.
    It listens on every interface, as JAX's coordination service will, unless the coordinator's
    address is a loopback one (every process on this machine): then on that address alone."""
    with socket.create_server((host if _loopback(host) else "", port)) as server:
        server.settimeout(1.0)
        arrived: dict[int, tuple[socket.socket, dict]] = {}
        try:
            while len(arrived) < count - 1:
                missing = [p for p in range(1, count) if p not in arrived]
                if clock.over():
                    _say(f"error: process 0: processes {missing} of {count} never connected to {coordinator} within "
                         f"{clock.limit:.0f} s; start them with the same --coordinator and --num_processes (or "
                         "raise NEOJAX_PEER_WAIT_S)")
                    raise SystemExit(LOST_EXIT)
                if clock.say_now():
                    _say(f"process 0: waiting for processes {missing} of {count} to connect to {coordinator} "
                         f"({clock.waited():.0f} s)")
                try:
                    conn, peer = server.accept()
                    view = _receive(conn, _patience(10)) or {}
                except (OSError, ValueError):  # not one of ours (a port scanner, a stale client): ignored
                    continue
                problem = _disagreement(view, count, arrived, peer[0])
                if problem:
                    for other, _ in [*arrived.values(), (conn, view)]:
                        _send(other, {"error": problem})
                    raise UsageError(problem)
                arrived[view["process_id"]] = (conn, {**view, "address": peer[0]})
            for conn, _ in arrived.values():
                _send(conn, {"go": True})
            for conn, _ in arrived.values():  # they close first: no TIME_WAIT left on the port JAX takes next
                conn.settimeout(10.0)
                try:
                    conn.recv(1)
                except OSError:
                    pass
        finally:
            for conn, _ in arrived.values():
                conn.close()


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def _disagreement(view: dict, count: int, arrived: dict, where: str) -> Optional[str]:
    """What is wrong with a newcomer's view of the run, in one line naming both sides (None: nothing)."""
    pid = view.get("process_id")
    if view.get("num_processes") != count:
        return (f"process {pid} (at {where}) was started with --num_processes {view.get('num_processes')} and "
                f"process 0 with {count}: give every process the same count")
    if pid == 0 or pid in arrived:
        first = "process 0 itself" if pid == 0 else f"a process at {arrived[pid][1]['address']}"
        return (f"two processes were given --process_id {pid} ({first} and one at {where}): give each process of "
                f"the {count} its own id, 0 to {count - 1}")
    return None


def _join(host: str, port: int, count: int, process_id: int, clock: _Clock, coordinator: str) -> None:
    """Another process: connect to process 0 (retrying until it listens), say who this is, wait for go."""
    def waiting(what: str) -> Callable[[], None]:
        def check() -> None:
            if clock.over():
                _say(f"error: process {process_id}: {what} never came within {clock.limit:.0f} s at {coordinator}; "
                     "start it with the same --coordinator and --num_processes (or raise NEOJAX_PEER_WAIT_S)")
                raise SystemExit(LOST_EXIT)
            if clock.say_now():
                _say(f"process {process_id}: waiting for {what} at {coordinator} ({clock.waited():.0f} s)")
        return check
    coordinator_wait = waiting("process 0 (the coordinator)")
    while True:
        coordinator_wait()
        try:
            conn = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            time.sleep(0.5)
    with conn:
        _send(conn, {"process_id": process_id, "num_processes": count})
        reply = _receive(conn, waiting(f"the other processes of {count}"))
        if reply is None:  # process 0 ended without an answer (its own error says why)
            _say(f"error: process {process_id}: process 0 at {coordinator} closed the connection before every "
                 "process had come; see its output")
            raise SystemExit(LOST_EXIT)
        if "error" in reply:
            raise UsageError(reply["error"])
