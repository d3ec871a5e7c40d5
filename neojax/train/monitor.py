"""What the loop tells the run's observers at each step: the time accounting (neojax.train.timing),
the hang watchdog and the profiler (neojax.train.watch), behind one object with four calls."""
from __future__ import annotations

import jax

from neojax.train.timing import Clock, Goodput, memory
from neojax.train.watch import Profiler, Watchdog


class Monitor:
    def __init__(self, config, workdir: str, start: int, clock: Clock, main_process: bool):
        self.clock, self.start = clock, start
        self.goodput = Goodput(workdir, start, clock, enabled=main_process)
        self.profiler = Profiler(workdir, config.profile.steps)
        self.watchdog = Watchdog(workdir, config.watchdog.factor, config.watchdog.min_s)

    def __enter__(self) -> "Monitor":
        self.watchdog.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.__exit__(*exc)

    def before(self, step: int) -> None:
        """Step `step` (1-based) is about to be dispatched."""
        self.profiler.before(step)

    def dispatched(self, step: int, state, metrics) -> None:
        """Step `step` was dispatched (and its successor's batch fetched)."""
        self.watchdog.beat(step)
        self.profiler.after(step, state)
        if step == self.start + 1:
            jax.block_until_ready(metrics)  # compiled and run once: the end of start-up
            self.clock.started_up()

    def logged(self, step: int, steps: int) -> dict:
        """At a log step (`steps` since the last): the breakdown to log; goodput written, requests read."""
        self.goodput.update(step)
        self.profiler.poll(step)
        return {**self.clock.window(steps), **memory()}

    def ended(self, step: int, how: str) -> None:
        self.goodput.update(step, how)
