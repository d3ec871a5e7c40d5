"""Watching a run from the host: hang reports and profiles on request.

A hang: the loop marks each step it dispatches (`Watchdog.beat`). A step whose mark comes more than
`factor` times the recent median after the previous one (and at least `min_s` seconds) makes the
watchdog thread dump every Python thread's stack (faulthandler) into the log (stderr) and
WORKDIR/hangs/host-P-step-S.txt, naming the host and the step, and the run keeps waiting; when the
step comes, it says that the run recovered. It covers what the lost-peer watch cannot: a live host
stuck in a collective keeps its heartbeat. Every host runs its own.

A profile: steps START:END (profile.steps, or a request written into WORKDIR/profile/REQUEST while the
run goes, "START:END" with steps ahead of the run) are traced with jax.profiler on every host into
WORKDIR/profile/host-P/ (TensorBoard's profile plugin and Perfetto read it). Every host reads the
same request, so all start at the same step.
"""
from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Optional

import jax

from neojax import paths

RECENT = 20  # step intervals the median is taken over


class Watchdog:
    def __init__(self, workdir: str, factor: float, min_s: float, every: float = 0.5):
        self.workdir, self.factor, self.min_s, self.every = workdir, factor, min_s, every
        self.host = jax.process_index()
        self.intervals: deque = deque(maxlen=RECENT)
        self.last, self.step, self.reported = time.monotonic(), 0, None
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="neojax-hang-watch", daemon=True)

    def __enter__(self) -> "Watchdog":
        if self.factor > 0:
            self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()

    def beat(self, step: int) -> None:
        """Step `step` was dispatched (the previous one's inputs were ready)."""
        now = time.monotonic()
        with self.lock:
            if self.step:  # the first interval holds compilation: not a step's time
                self.intervals.append(now - self.last)
            self.last, self.step = now, step
            if self.reported is not None:
                print(f"host {self.host}: recovered: step {step} came {now - self.reported:.1f} s after the hang "
                      "report", file=sys.stderr, flush=True)
                self.reported = None

    def limit(self) -> Optional[float]:
        """Seconds a step may take before it is reported (None: too few steps seen to tell)."""
        if len(self.intervals) < 3:
            return None
        return max(self.min_s, self.factor * statistics.median(self.intervals))

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            with self.lock:
                limit, waited, step = self.limit(), time.monotonic() - self.last, self.step + 1
                due = limit is not None and waited > limit and self.reported is None
                if due:
                    self.reported = time.monotonic()
            if due:
                self._report(step, waited, limit)

    def _report(self, step: int, waited: float, limit: float) -> None:
        head = (f"host {self.host}: step {step} has taken {waited:.1f} s (more than {limit:.1f} s, {self.factor:g}x "
                "the recent median): the stacks of its Python threads follow; the run keeps waiting")
        with tempfile.TemporaryFile("w+") as f:  # faulthandler writes to a real file descriptor
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            stacks = f.read()
        print(f"{head}\n{stacks}", file=sys.stderr, flush=True)
        try:
            folder = paths.path(self.workdir) / "hangs"
            folder.mkdir(parents=True, exist_ok=True)
            paths.write_text(str(folder / f"host-{self.host}-step-{step}.txt"), f"{head}\n{stacks}")
        except (OSError, ValueError) as e:  # the report in the log is what matters most
            print(f"host {self.host}: could not write the hang report ({e})", file=sys.stderr, flush=True)


def parse_steps(text: str) -> Optional[tuple[int, int]]:
    """'START:END' -> (START, END) with 0 < START < END, else None."""
    start, sep, end = str(text).partition(":")
    if not (sep and start.strip().isdigit() and end.strip().isdigit()):
        return None
    start, end = int(start), int(end)
    return (start, end) if 0 < start < end else None


class Profiler:
    """Traces steps START:END (profile.steps, or WORKDIR/profile/REQUEST read at log steps)."""

    def __init__(self, workdir: str, steps: str = ""):
        self.workdir, self.host = workdir, jax.process_index()
        self.window = parse_steps(steps) if steps else None
        self.request = paths.path(workdir) / "profile" / "REQUEST"
        self.local: Optional[str] = None
        self.target = str(paths.path(workdir) / "profile" / f"host-{self.host}")

    def poll(self, step: int) -> None:
        """At a log step: take a request for steps still ahead (an unreadable one is said and dropped)."""
        if self.window is not None or not self.request.exists():
            return
        text = self.request.read_text().strip()
        window = parse_steps(text)
        if window is None or window[0] <= step:
            print(f"host {self.host}: {self.request} asks for {text!r}; write START:END with START after step {step}",
                  file=sys.stderr, flush=True)
            return
        self.window = window

    def before(self, step: int) -> None:
        """Before dispatching step `step` (1-based): start tracing at START."""
        if self.window is not None and step == self.window[0] and self.local is None:
            remote = paths.is_remote(self.workdir)
            self.local = tempfile.mkdtemp(prefix="neojax-profile-") if remote else self.target
            os.makedirs(self.local, exist_ok=True)
            jax.profiler.start_trace(self.local, create_perfetto_trace=True)  # also a file Perfetto opens

    def after(self, step: int, state) -> None:
        """After step `step`: at END, wait for it and write the trace."""
        if self.local is None or step < self.window[1]:
            return
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        if paths.is_remote(self.workdir):
            paths.upload_tree(self.local, self.target)
        print(f"host {self.host}: profile of steps {self.window[0]}-{self.window[1]} written to {self.target} "
              f"(tensorboard --logdir {paths.path(self.workdir) / 'profile'}, or Perfetto)", flush=True)
        self.local, self.window = None, None
        if self.host == 0 and self.request.exists():
            self.request.unlink()
