"""metrics.jsonl (one object per logged step) and TensorBoard events in the workdir."""
from __future__ import annotations

import json
import os
import sys

from tensorboardX import SummaryWriter


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if not enabled:
            return
        if os.path.exists(self.path):  # drop what a killed run logged after its last checkpoint
            kept = [line for line in _intact_lines(self.path) if json.loads(line)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        record = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step":
                self.tb.add_scalar(k, v, step)
        for k, v in values.items():
            if isinstance(v, str):
                self.tb.add_text(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _intact_lines(path: str) -> list[str]:
    """The lines before the first one that is not a complete record (a kill mid-write leaves a
    partial last line); what is cut is reported."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for n, line in enumerate(lines):
        try:
            ok = line.endswith("\n") and isinstance(json.loads(line).get("step"), int)
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if not ok and line.strip():
            print(f"warning: {path} line {n + 1} is not a complete record ({line.strip()[:60]!r}); truncating the "
                  f"file there ({len(lines) - n} line(s) dropped)", file=sys.stderr, flush=True)
            return [x for x in lines[:n] if x.strip()]
    return [x for x in lines if x.strip()]


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
