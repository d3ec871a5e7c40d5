"""The train command as two real processes on a loopback coordinator (one CPU device each, mesh
data=2, a shared workdir) against one process with two devices and the same mesh: bit-identical
parameters and metrics (each device holds the same rows and runs the same program, and a sum of two
is the same in either order), only process 0 speaks, a killed process is named by its peer within
seconds, and kills and preemptions resume exactly: one scenario (each launch pays for a process
start and compilation). Two processes on object storage: tests/test_paths.py."""
import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from support import device_env, finish, processes

from neojax import checkpoint
from neojax.sharding import LOST_EXIT
from neojax.train.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The quickstart's smoke run with every kind of evaluation hook: valid_loss, samples, tasks."""
    tasks = tmp_path_factory.mktemp("tasks")
    (tasks / "lambada_openai.jsonl").write_text("".join(json.dumps({"text": f"import os\nx = {i}"}) + "\n"
                                                        for i in range(4)))
    return ["--config", "quickstart:smoke", "--config.mesh=data=2", "--config.checkpoint.async_save=false",
            "--config.train.total_steps=9", "--config.train.log_every=1",
            '--config.eval.hooks=["valid_loss","samples","tasks"]', '--config.eval.tasks=["lambada_openai"]',
            f"--config.eval.task_data_dir={tasks}"]


def launch(smoke, workdir):
    return processes("neojax.train", [*smoke, "--workdir", workdir], devices=1)


def until(procs, marker) -> str:
    """Process 0's output up to the line holding `marker`; if it never comes, every process ended."""
    read = []
    for line in procs[0].stdout:
        read.append(line)
        if marker in line:
            return "".join(read)
    for p in procs:
        p.kill()
    raise AssertionError(f"{marker!r} never printed")


def same_params(a, b):
    la, lb = jax.tree.leaves(checkpoint.load(a).params), jax.tree.leaves(checkpoint.load(b).params)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def records(workdir):
    """The metrics a run computes (not its timings, which differ run to run)."""
    timed = lambda k: k == "train/tokens_per_sec" or k.startswith(("time/", "memory/"))
    return [{k: v for k, v in m.items() if not timed(k)} for m in read_metrics(workdir)]


def samples(stdout):
    return [line for line in stdout.splitlines() if line.startswith("    [")]


@pytest.fixture(scope="module")
def one_process(smoke, tmp_path_factory):
    """(workdir, stdout) of one process with two devices."""
    workdir = str(tmp_path_factory.mktemp("one_process") / "run")
    out = subprocess.run([sys.executable, "-m", "neojax.train", *smoke, "--workdir", workdir], check=True,
                         capture_output=True, text=True, timeout=600, env=device_env(2)).stdout
    return workdir, out


def test_a_lost_peer_a_preemption_and_two_resumes_end_as_one_process_does(smoke, one_process, tmp_path):
    """One 2-process run through what a pod meets: process 1 killed (its peer names it within
    seconds), a resume, SIGTERM to both (each saves at one agreed step), a second resume to the end:
    the parameters, metrics and samples of one uninterrupted process, process 0 alone speaking. The
    workdir then exports on one device, and one a single device wrote generates on two."""
    reference, reference_out = one_process
    workdir = str(tmp_path / "run")
    procs = launch(smoke, workdir)
    before = until(procs, "step 4/9")  # after the step-3 checkpoint (and its samples)
    procs[1].kill()
    (out0, err0), (out1, _) = finish(procs, timeout=60)  # a bounded wait: the peer watch, not a hang
    assert procs[0].returncode == LOST_EXIT
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "process 1 of this 2-process run was lost" in errors[0], err0[-2000:]
    spoken = [out1]

    procs = launch(smoke, workdir)
    until(procs, "step 5/9")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    (out0, err0), (out1, _) = finish(procs)
    assert [p.returncode for p in procs] == [143, 143], err0[-3000:]
    assert "SIGTERM: saved step" in out0 and "SIGTERM" not in out1
    spoken.append(out1)

    (out0, err0), (out1, _) = finish(launch(smoke, workdir))
    assert "resumed from" in out0 and "done: step 9" in out0, err0[-3000:]
    assert same_params(workdir, reference)
    assert any("lambada_openai/acc" in m for m in records(workdir))
    assert records(workdir) == records(reference)  # losses, valid loss and perplexity, the tasks' metrics
    assert samples(before) == samples(reference_out)[:3] and samples(out0)[-3:] == samples(reference_out)[-3:]
    assert len(samples(reference_out)) == 9  # 3 prompts at steps 3, 6 and 9
    for out in spoken + [out1]:  # process 0 alone speaks
        assert "step " not in out and "done" not in out and not samples(out), out[-1000:]

    r = subprocess.run([sys.executable, "-m", "neojax.convert", workdir, str(tmp_path / "hf"), "--to", "hf"],
                       capture_output=True, text=True, timeout=300, env=device_env(1))
    assert r.returncode == 0 and "damaged" not in r.stderr, r.stderr[-2000:]
    assert np.array_equal(checkpoint.load(str(tmp_path / "hf")).params["wte"], checkpoint.load(workdir).params["wte"])
    one = str(tmp_path / "one")
    first = [sys.executable, "-m", "neojax.train", "--config", "quickstart:smoke", "--workdir", one]
    subprocess.run([*first, "--config.train.total_steps=3"], check=True, capture_output=True, timeout=300,
                   env=device_env(1))
    r = subprocess.run([sys.executable, "-m", "neojax.generate", "--checkpoint", one, "--prompt", "def ",
                        "--max_new_tokens", "4"], capture_output=True, text=True, timeout=300, env=device_env(2))
    assert r.returncode == 0 and "damaged" not in r.stderr, r.stderr[-2000:]
    r = subprocess.run([*first, "--config.mesh=data=2"], capture_output=True, text=True, timeout=300, env=device_env(2))
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
