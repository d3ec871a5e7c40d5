"""python -m neojax.train --report WORKDIR: where a run's time went, from its workdir (local or
object storage): goodput and badput by cause across every restart (neojax.train.timing), the time
between runs and the progress each restart lost, tokens/s and MFU, and WORKDIR/report.png (loss,
throughput and goodput against time)."""
from __future__ import annotations

import json

from neojax import cli, paths
from neojax.train import timing


def run_report(workdir: str) -> int:
    if not paths.path(workdir).exists():
        raise cli.UsageError(f"--report {workdir} does not exist; give a training workdir")
    segments = timing.read_segments(workdir)
    if not segments:
        raise cli.UsageError(f"--report {workdir} has no goodput.jsonl: not a workdir of a run this version of "
                             "neojax trained (or it has not logged a step yet)")
    metrics = _metrics(workdir)
    train = [m for m in metrics if "train/tokens_per_sec" in m]
    result = timing.report(segments)
    last = train[-1] if train else {}
    print(timing.summary(result, last.get("train/tokens_per_sec"), last.get("train/mfu")))
    chart = str(paths.path(workdir) / "report.png")
    plt = cli.require("matplotlib.pyplot", "the report's chart", "matplotlib")
    with paths.local_file(chart) as local:
        _plot(plt, segments, train, local)
    print(f"wrote {chart}")
    return 0


def _metrics(workdir: str) -> list[dict]:
    path = paths.path(workdir) / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _plot(plt, segments: list[dict], train: list[dict], path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [m["step"] for m in train]
    axes[0].plot(steps, [m["train/loss"] for m in train])
    axes[0].set(xlabel="step", ylabel="train loss")
    axes[1].plot(steps, [m["train/tokens_per_sec"] for m in train])
    axes[1].set(xlabel="step", ylabel="tokens/s")
    t0, xs, ys = segments[0]["started"], [], []
    for i in range(len(segments)):  # goodput of the run up to the end of each segment
        upto = timing.report(segments[:i + 1])
        xs.append((segments[i]["ended"] - t0) / 60)
        ys.append(100 * upto["goodput"])
    axes[2].plot(xs, ys, "o-")
    axes[2].set(xlabel="minutes since the first start", ylabel="goodput so far (%)", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
