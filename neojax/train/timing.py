"""Where a run's time goes: the step-time breakdown logged at log steps, and goodput across restarts.

Wall time is split by cause, measured on the host around what the loop already does (no device
read-back is added between log steps):
- startup: from the loop's start (after the command parsed its flags) to the end of the first step
  (building data and model, restoring, compiling);
- data: waiting for the next batch; hooks: evaluation and samples; checkpoint: the part of a save
  that blocks the loop;
- step: the rest, the device's steps.
Each run of a workdir (a "segment": a first run, or a resume) appends one record to goodput.jsonl,
rewritten whole at every log step (object storage has no append). A resume from a checkpoint older
than the last step a segment reached recomputes the steps in between: their share of that
segment's step time is "lost progress". Time between segments is a gap, not badput: after a
preemption (SIGTERM) or a kill, or a pause the user chose (the previous run finished its steps).
So: wall = startup + data + hooks + checkpoint + lost + productive, for each segment and the run.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Optional

import jax

from neojax import paths

CAUSES = ("startup", "data", "hooks", "checkpoint")


class Clock:
    """Seconds by cause since the segment started; `window()` gives a log step's breakdown."""

    def __init__(self, started: float):
        self.started = started  # time.time() of the segment's start (wall clock: segments are compared)
        self.perf_start = time.perf_counter() - (time.time() - started)
        self.total = dict.fromkeys(CAUSES, 0.0)
        self.window_causes = dict.fromkeys(CAUSES, 0.0)
        self.window_start = self.perf_start

    @contextlib.contextmanager
    def timing(self, cause: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(cause, time.perf_counter() - began)

    def add(self, cause: str, seconds: float) -> None:
        self.total[cause] += seconds
        self.window_causes[cause] += seconds

    def started_up(self) -> None:
        """The first step is done: everything since the start that no other cause took is start-up."""
        elapsed = time.perf_counter() - self.perf_start
        self.add("startup", max(0.0, elapsed - sum(self.total.values())))

    def wall(self) -> float:
        return time.perf_counter() - self.perf_start

    def window(self, steps: int) -> dict:
        """The breakdown since the last call, per step where it recurs (metrics time/...)."""
        now = time.perf_counter()
        elapsed = now - self.window_start
        out = {f"time/{cause}_s": self.window_causes[cause] for cause in CAUSES if self.window_causes[cause]}
        busy = sum(self.window_causes.values())
        out["time/step_s"] = max(0.0, elapsed - busy) / max(steps, 1)  # the device's step, on average
        out["time/data_per_step_s"] = self.window_causes["data"] / max(steps, 1)
        self.window_start, self.window_causes = now, dict.fromkeys(CAUSES, 0.0)
        return out


def memory() -> dict:
    """Per-device memory in use and its peak (bytes) where the backend reports them (not XLA:CPU)."""
    out = {}
    for device in jax.local_devices()[:1]:  # the first local device speaks for its host
        stats = device.memory_stats() or {}
        if "bytes_in_use" in stats:
            out["memory/bytes_in_use"] = stats["bytes_in_use"]
        if "peak_bytes_in_use" in stats:
            out["memory/peak_bytes"] = stats["peak_bytes_in_use"]
    return out


class Goodput:
    """This segment's record in WORKDIR/goodput.jsonl (process 0 writes; one line per segment)."""

    def __init__(self, workdir: str, start_step: int, clock: Clock, enabled: bool = True):
        self.path, self.clock, self.enabled = paths.path(workdir) / "goodput.jsonl", clock, enabled
        self.previous = read_segments(workdir) if enabled else []
        self.record = {"started": clock.started, "start_step": start_step, "step": start_step, "ended": clock.started,
                       "end": "running", **{f"{c}_s": 0.0 for c in CAUSES}, "step_s": 0.0}

    def update(self, step: int, end: str = "running") -> None:
        """The segment's totals so far (`end`: running, finished, preempted)."""
        if not self.enabled:
            return
        wall = self.clock.wall()
        self.record.update(step=step, ended=self.clock.started + wall, end=end,
                           **{f"{c}_s": self.clock.total[c] for c in CAUSES})
        self.record["step_s"] = max(0.0, wall - sum(self.clock.total.values()))
        lines = [json.dumps(r) + "\n" for r in self.previous + [self.record]]
        paths.write_text(self.path, "".join(lines))


def read_segments(workdir: str) -> list[dict]:
    """The goodput records of every earlier run of `workdir` (a damaged line skipped)."""
    path = paths.path(workdir) / "goodput.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and {"started", "ended", "start_step", "step"} <= set(record):
            out.append(record)
    return out


def report(segments: list[dict]) -> dict:
    """Goodput of a run's segments: wall time, badput by cause (lost progress: the step time of steps
    a later segment recomputed), productive time, goodput = productive / wall, and the gaps between
    segments with what ended the one before."""
    lost = [0.0] * len(segments)
    for i in range(1, len(segments)):  # a resume recomputes the steps its predecessor did after the checkpoint
        prev, later = segments[i - 1], segments[i]
        done = prev["step"] - prev["start_step"]
        redone = min(max(0, prev["step"] - later["start_step"]), done)
        if redone:
            lost[i - 1] += redone * prev["step_s"] / done
    causes = {c: sum(s.get(f"{c}_s", 0.0) for s in segments) for c in CAUSES}
    causes["lost"] = sum(lost)
    wall = sum(s["ended"] - s["started"] for s in segments)
    productive = sum(s["step_s"] for s in segments) - causes["lost"]
    gaps = [{"after": i, "seconds": later["started"] - segments[i]["ended"],
             "why": {"preempted": "preempted (SIGTERM)", "finished": "paused: the run had finished",
                     "failed": "an error ended the run"}.get(segments[i]["end"],
                                                             "killed or lost (the run did not stop itself)"),
             "lost_steps": max(0, segments[i]["step"] - later["start_step"])}
            for i, later in enumerate(segments[1:])]
    return {"wall_s": wall, "productive_s": productive, "goodput": productive / wall if wall else 0.0,
            "badput_s": causes, "segments": len(segments), "gaps": gaps, "lost_by_segment": lost}


def gap_lines(result: dict) -> list[str]:
    return [f"  restart {g['after'] + 1}: {g['seconds']:.1f} s between runs, {g['why']}; {g['lost_steps']} step(s) "
            f"recomputed ({result['lost_by_segment'][g['after']]:.1f} s of lost progress)" for g in result["gaps"]]


def summary(result: dict, tokens_per_s: Optional[float] = None, mfu: Optional[float] = None) -> str:
    causes = result["badput_s"]
    share = lambda s: f"{s:.1f} s ({s / result['wall_s']:.1%})" if result["wall_s"] else f"{s:.1f} s"
    lines = [f"goodput {result['goodput']:.1%}: productive {share(result['productive_s'])} of {result['wall_s']:.1f} s "
             f"wall over {result['segments']} run(s)",
             "badput: " + ", ".join(f"{c} {share(v)}" for c, v in causes.items())]
    if tokens_per_s is not None:
        lines.append(f"throughput {tokens_per_s:,.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    return "\n".join(lines + gap_lines(result))
