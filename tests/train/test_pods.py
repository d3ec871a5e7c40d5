"""Where a pod run's time goes, shown by one 2-process scenario (neojax.train.timing and .watch): a
slow batch counts as data time; a host made to sleep inside a step is reported by the watchdog
with its stacks, naming the host and the step; a profile of two steps has a trace per host that
xprof (TensorBoard's profile plugin) parses; a SIGKILL and a resume count the recomputed steps as
lost progress; and `train --report` adds its causes up to the wall time."""
import glob
import gzip
import json
import signal
import subprocess
import sys

import pytest
from support import device_env, processes

from neojax.train import timing
from neojax.train.metrics import read_metrics

pytestmark = pytest.mark.slow

PROBE = '''"""The quickstart's smoke run with a probe objective: batch SLOW_BATCH takes 3 s to come, and
process 1 sleeps 8 s inside step NAP_STEP (a host callback in the loss)."""
import os
import time

import jax

from neojax import registry
from neojax.train.config import load_experiment
from neojax.train.objectives import Setup, language_model
from neojax.train.step import lm_loss, predict

SLOW_BATCH, NAP_STEP = int(os.environ["SLOW_BATCH"]), int(os.environ["NAP_STEP"])


class Slow:
    """A batch iterator whose SLOW_BATCH-th batch is late."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def __next__(self):
        self.count += 1
        if self.count == SLOW_BATCH:
            time.sleep(3)
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


calls = [0]


def nap(_):
    calls[0] += 1  # once per step: one device a process
    if jax.process_index() == 1 and calls[0] == NAP_STEP:
        time.sleep(8)


@registry.register("objective", "probe")
def probe(config, workdir):
    setup = language_model(config, workdir)
    setup.data.train = Slow(setup.data.train)

    def loss(params, batch, rng):
        value, aux = lm_loss(predict(params, setup.model_config, batch, rng))
        jax.debug.callback(nap, value, partitioned=True)  # on every process, not only where the value is
        return value, aux
    return Setup(setup.model_config, setup.tokenizer, setup.params, setup.data, loss=loss)


def get_config(variant=""):
    c = load_experiment("quickstart:smoke")
    with c.unlocked():
        c.objective = "probe"
    return c
'''


def test_a_pod_runs_time_is_accounted_for(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    workdir = str(tmp_path / "run")
    argv = ["--config", str(tmp_path / "probe.py"), "--config.mesh=data=2", "--config.train.total_steps=16",
            "--config.train.log_every=2", "--config.checkpoint.every_steps=6", "--config.checkpoint.async_save=false",
            "--config.eval.every_steps=0", "--config.watchdog.factor=4", "--config.watchdog.min_s=4",
            "--config.profile.steps=3:5"]
    started = []  # every process, ended whatever fails

    def launch(args, env):
        started.extend(processes("neojax.train", [*args, "--workdir", workdir], env=env))
        return started[-2:]
    try:
        first = launch(argv, {**device_env(1), "SLOW_BATCH": "11", "NAP_STEP": "9"})
        for line in first[0].stdout:  # killed before its step-12 checkpoint: the resume (from 6) redoes steps 7-10
            if line.startswith("step 10/"):
                break
        for p in first:
            p.send_signal(signal.SIGKILL)
        errors = [p.communicate(timeout=120)[1] for p in first]
        # batch 11 is fetched while step 10 runs: its wait is data time in the window ending at step 10
        slow = [m["step"] for m in read_metrics(workdir) if m.get("time/data_s", 0) > 2.5]
        assert slow == [10], read_metrics(workdir)

        # the sleeping host: reported with its stacks, the host and the step named, and recovered
        hangs = {host: glob.glob(f"{workdir}/hangs/host-{host}-step-*.txt") for host in (0, 1)}
        assert f"{workdir}/hangs/host-1-step-9.txt" in hangs[1], errors[1][-3000:]
        assert "in nap" in open(f"{workdir}/hangs/host-1-step-9.txt").read() and "host 1: step 9 has taken" in errors[1]
        assert "host 1: recovered: step 9 came" in errors[1]
        assert f"{workdir}/hangs/host-0-step-9.txt" in hangs[0]  # its peer, waiting in the step's collective
        # the profile: one trace per host that xprof's converter reads
        from xprof.convert import raw_to_tool_data  # the profile plugin's own reader
        for host in (0, 1):
            traces = glob.glob(f"{workdir}/profile/host-{host}/**/*.xplane.pb", recursive=True)
            assert traces, f"no trace for host {host}"
            data, _ = raw_to_tool_data.xspace_to_tool_data(traces, "trace_viewer", {})
            assert json.loads(data)["traceEvents"]
            perfetto = glob.glob(f"{workdir}/profile/host-{host}/**/perfetto_trace.json.gz", recursive=True)
            assert json.loads(gzip.open(perfetto[0]).read())  # what Perfetto opens

        (tmp_path / "run" / "profile" / "REQUEST").write_text("11:13\n")  # a profile asked of a running run
        second = launch(argv[:-1], {**device_env(1), "SLOW_BATCH": "0", "NAP_STEP": "0"})  # from step 6
        outs = [p.communicate(timeout=600) for p in second]
        assert [p.returncode for p in second] == [0, 0], outs[0][1][-3000:]
        for host in (0, 1):  # the request was taken by both hosts at one step, and then cleared
            assert len(glob.glob(f"{workdir}/profile/host-{host}/**/*.xplane.pb", recursive=True)) == 2
            assert f"host {host}: profile of steps 11-13 written" in outs[host][0] + outs[host][1]
        assert not (tmp_path / "run" / "profile" / "REQUEST").exists()
        segments = timing.read_segments(workdir)
        assert [(s["start_step"], s["step"], s["end"]) for s in segments] == [(0, 10, "running"), (6, 16, "finished")]
        result = timing.report(segments)
        causes = sum(result["badput_s"].values()) + result["productive_s"]
        assert abs(causes - result["wall_s"]) < 1e-6 * result["wall_s"]  # the causes add up to the wall time
        per_step = segments[0]["step_s"] / 10
        assert result["badput_s"]["lost"] == pytest.approx(4 * per_step)  # steps 7-10 computed twice
        assert result["gaps"][0]["lost_steps"] == 4 and "killed" in result["gaps"][0]["why"]
        assert segments[0]["data_s"] > 3 and segments[1]["data_s"] < 3
        report = subprocess.run([sys.executable, "-m", "neojax.train", "--report", workdir], capture_output=True,
                                text=True, env=device_env(1), timeout=120)
        assert report.returncode == 0, report.stderr
        assert report.stdout.startswith("goodput ") and "restart 1:" in report.stdout and "4 step(s) recomputed" in \
            report.stdout and (tmp_path / "run" / "report.png").stat().st_size > 0
    finally:
        for proc in started:
            proc.kill()
