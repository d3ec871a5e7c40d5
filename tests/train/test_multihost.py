"""The train command as two real processes on a loopback coordinator (one CPU device each, mesh
data=2, a shared workdir) against one process with two devices and the same mesh: bit-identical
parameters and metrics (each device holds the same rows and runs the same program, and a sum of two
is the same in either order), only process 0 speaks, a killed process is named by its peer within
seconds, and kills and preemptions resume exactly."""
import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from support import device_env, finish, free_port, object_store

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
            '--config.eval.hooks=["valid_loss","samples","tasks"]', '--config.eval.tasks=["lambada_openai"]',
            f"--config.eval.task_data_dir={tasks}"]


def launch(smoke, workdir):
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "neojax.train", *smoke, "--workdir", workdir, "--coordinator",
                              f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=device_env(1))
            for i in range(2)]


def until(procs, marker):
    """Read process 0's output up to the line holding `marker`; if it never comes, end every process."""
    for line in procs[0].stdout:
        if marker in line:
            return
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


@pytest.mark.parametrize("where", ["local", "gs"])
def test_two_processes_equal_one_bit_for_bit(where, smoke, one_process, tmp_path):
    one_process, reference_out = one_process

    def run(workdir):
        outs = finish(launch(smoke, workdir))
        assert all(p_err is not None for _, p_err in outs)
        return outs

    if where == "gs":
        with object_store("gs") as bucket:
            workdir = f"{bucket}/run"
            (out0, err0), (out1, err1) = run(workdir)
            assert "done: step 6" in out0, err0[-3000:] + err1[-3000:]
            assert same_params(workdir, one_process)
            assert records(workdir) == records(one_process)
        return
    workdir = str(tmp_path / "run")
    (out0, err0), (out1, err1) = run(workdir)
    assert "done: step 6" in out0, err0[-3000:] + err1[-3000:]
    assert same_params(workdir, one_process)
    assert any("lambada_openai/acc" in m for m in records(workdir))
    assert records(workdir) == records(one_process)  # losses, valid loss and perplexity, the tasks' metrics
    assert samples(out0) == samples(reference_out) and len(samples(out0)) == 6  # 3 prompts at steps 3 and 6
    assert "step " not in out1 and "done" not in out1 and not samples(out1)  # process 0 alone prints


def test_a_killed_process_is_named_by_its_peer_and_both_resume_exactly(smoke, one_process, tmp_path):
    workdir = str(tmp_path / "run")
    procs = launch(smoke, workdir)
    until(procs, "step 4/6")  # after the step-3 checkpoint
    procs[1].kill()
    (_, err0), _ = finish(procs, timeout=60)  # a bounded wait: the peer watch, not a hang
    assert procs[0].returncode == LOST_EXIT
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "process 1 of this 2-process run was lost" in errors[0], err0[-2000:]
    (out0, err0), _ = finish(launch(smoke, workdir))
    assert "resumed from" in out0 and "done: step 6" in out0, err0[-3000:]
    assert same_params(workdir, one_process[0])


def test_sigterm_to_both_saves_at_one_agreed_step_and_both_resume_exactly(smoke, tmp_path):
    """jax's preemption sync names one step for every process (each saves its shards there)."""
    longer = [*smoke, "--config.train.total_steps=12", "--config.train.log_every=1"]
    uninterrupted = str(tmp_path / "uninterrupted")
    finish(launch(longer, uninterrupted))
    workdir = str(tmp_path / "run")
    procs = launch(longer, workdir)
    until(procs, "step 4/12")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    (out0, err0), (out1, _) = finish(procs)
    assert [p.returncode for p in procs] == [143, 143], err0[-3000:]
    assert "SIGTERM: saved step" in out0 and "SIGTERM" not in out1
    (out0, err0), _ = finish(launch(longer, workdir))
    assert "resumed from" in out0 and "done: step 12" in out0, err0[-3000:]
    assert same_params(workdir, uninterrupted)


def test_checkpoints_load_on_any_device_count(smoke, one_process, tmp_path):
    """A workdir two processes wrote is exported by one process with one device, and one a single
    device wrote resumes and evaluates on two: restored onto the devices at hand, never "damaged"."""
    workdir = str(tmp_path / "run")
    finish(launch(smoke, workdir))
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
