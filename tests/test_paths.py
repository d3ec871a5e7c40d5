"""Object storage against real servers the tests start on 127.0.0.1 (fake-gcs-server for gs://,
moto for s3://), reached through the standard variables: the smoke run trains there as one process on
a local disk does; on gs:// as two processes, SIGKILLed, resumed bit-identically and exported as a
Hugging Face directory that transformers loads."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from support import device_env, finish, object_store, processes

from neojax import checkpoint, paths
from neojax.cli import UsageError
from neojax.data.pipeline import RemoteTokens, build_token_cache
from neojax.train.metrics import read_metrics
from neojax.train.workdir import Workdir

SMOKE = ["--config", "quickstart:smoke", "--config.checkpoint.async_save=false", "--config.train.log_every=1",
         "--config.mesh=data=2"]


def train_command(workdir):
    return [sys.executable, "-m", "neojax.train", *SMOKE, "--workdir", workdir]


def launch(workdir, count, cwd):
    """The smoke run on mesh data=2: one process with two devices, or two with one each (a loopback
    coordinator), its output (stderr too) piped."""
    if count == 1:
        return [subprocess.Popen(train_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 cwd=cwd, env=device_env(2))]
    return processes("neojax.train", [*SMOKE, "--workdir", workdir], devices=1, cwd=cwd, stderr=subprocess.STDOUT)


def same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def losses(workdir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The uninterrupted smoke run on a local disk, one process with two devices."""
    workdir = str(tmp_path_factory.mktemp("local") / "run")
    subprocess.run(train_command(workdir), check=True, capture_output=True, timeout=600, env=device_env(2))
    return workdir


@pytest.mark.slow
def test_two_processes_on_gs_are_killed_resume_exactly_and_export(local_run, tmp_path):
    """Two processes write one gs:// workdir (each its own shards, process 0 the rest): killed,
    resumed, and equal bit for bit to one process on a local disk; the export loads in transformers."""
    with object_store("gs") as bucket:
        workdir = f"{bucket}/run1"
        procs = launch(workdir, 2, tmp_path)
        try:
            assert any("step 5/6" in line for line in procs[0].stdout), "the run ended before step 5"
        finally:
            for p in procs:
                p.kill()
        assert [p.wait(timeout=60) for p in procs] == [-9, -9]
        out = ran_on_object_storage(workdir, local_run, tmp_path, 2)
        assert f"resumed from {workdir}/checkpoints/3" in out

        export = f"{bucket}/run1-hf"
        r = subprocess.run([sys.executable, "-m", "neojax.convert", workdir, export, "--to", "hf"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        paths.download_tree(export, tmp_path / "hf")
    import transformers
    model = transformers.GPTNeoForCausalLM.from_pretrained(tmp_path / "hf")
    ours = checkpoint.load(local_run)
    assert np.array_equal(model.transformer.wte.weight.detach().numpy(), ours.params["wte"])
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("def main():\n    return 1")["input_ids"] == ours.tokenizer.encode("def main():\n    return 1")


@pytest.mark.slow
def test_one_process_on_s3_equals_one_on_a_local_disk(local_run, tmp_path):
    """The same run on s3:// (one process, uninterrupted: killing and resuming are storage-blind once
    gs:// shows them, and the export's writes are the run's own)."""
    with object_store("s3") as bucket:
        ran_on_object_storage(f"{bucket}/run1", local_run, tmp_path, 1)


def ran_on_object_storage(workdir, local_run, cwd, count) -> str:
    """Runs the smoke run in `workdir` to its end and checks it against `local_run`; process 0's output."""
    procs = launch(workdir, count, cwd)
    out = finish(procs)[0][0]
    assert [p.returncode for p in procs] == [0] * count and "done: step 6" in out, out[-3000:]
    assert os.listdir(cwd) == []  # nothing local: no folder named "gs:" or "s3:"
    assert same(checkpoint.load(workdir).params, checkpoint.load(local_run).params)
    assert losses(workdir) == losses(local_run)
    names = {p.name for p in paths.path(workdir).iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoints", "tb", "model", "data_cache", "tokenizer"} <= names
    assert ".lock" not in names  # the lease is given back at the end
    return out


@pytest.mark.slow
def test_token_cache_on_object_storage_is_read_by_range_and_equals_the_local_one(tiny_tokenizer, tmp_path):
    jsonl_file = tmp_path / "docs.jsonl"
    jsonl_file.write_text("".join(json.dumps({"text": f"document {i}: " + "words " * (i % 9)}) + "\n"
                                  for i in range(100)))
    jsonl_file = str(jsonl_file)
    local = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path), progress=False,
                              shard_docs=16)
    with object_store("gs") as bucket:
        remote = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, f"{bucket}/cache",
                                   progress=False, shard_docs=16)
        assert all(isinstance(part, RemoteTokens) for part in remote.train.parts)  # never copied whole
        assert len(remote.train.parts) > 1
        np.testing.assert_array_equal(np.asarray(remote.train), np.asarray(local.train))
        np.testing.assert_array_equal(np.asarray(remote.valid), np.asarray(local.valid))
        edge = int(remote.train.offsets[1])  # a window across two shards
        np.testing.assert_array_equal(remote.train[edge - 3:edge + 4], np.asarray(local.train)[edge - 3:edge + 4])


@pytest.mark.slow
def test_a_live_lease_refuses_a_second_run_and_a_dead_holders_lapses(tmp_path):
    from ml_collections import ConfigDict
    config = ConfigDict({"x": 1})
    with object_store("s3") as bucket:
        with Workdir.open(config, f"{bucket}/run"):
            lease = json.loads(paths.path(f"{bucket}/run/.lock").read_text())
            assert lease["pid"] == os.getpid()
            with pytest.raises(UsageError, match=r"in use by another training process \(pid \d+"):
                Workdir._acquire(Workdir(f"{bucket}/run", config))
        assert not paths.path(f"{bucket}/run/.lock").exists()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        paths.write_text(f"{bucket}/run/.lock", json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                            "time": 1e12}))
        with Workdir.open(config, f"{bucket}/run"):  # its holder exited: taken over at once
            pass


def test_an_unknown_scheme_is_one_line_and_creates_no_folder(tmp_path):
    with pytest.raises(UsageError, match=r"hdfs://x/run: neojax cannot read or write hdfs:// paths"):
        paths.path("hdfs://x/run")
    r = subprocess.run([sys.executable, "-m", "neojax.train", "--config", "quickstart:smoke", "--workdir",
                        "hdfs://x/run"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "hdfs://" in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_evaluate_reads_tasks_and_writes_results_on_object_storage(local_run, tmp_path):
    docs = [{"text": f"def f{i}(x):\n    return x + {i}"} for i in range(6)]
    local = tmp_path / "tasks"
    local.mkdir()
    (local / "lambada_openai.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))

    def evaluate(data_dir, output):
        r = subprocess.run([sys.executable, "-m", "neojax.evaluate", "--checkpoint", local_run, "--tasks",
                            "lambada_openai", "--data_dir", data_dir, "--output", output], capture_output=True,
                           text=True, timeout=300, env=device_env(1))
        assert r.returncode == 0, r.stderr[-3000:]

    evaluate(str(local), str(tmp_path / "local.json"))
    with object_store("s3") as bucket:
        paths.upload_tree(local, f"{bucket}/tasks")
        evaluate(f"{bucket}/tasks", f"{bucket}/out/results.json")
        remote = json.loads(paths.path(f"{bucket}/out/results.json").read_text())
    expected = json.loads((tmp_path / "local.json").read_text())
    assert {k: v for k, v in remote["lambada_openai"].items() if "seconds" not in k} == \
        {k: v for k, v in expected["lambada_openai"].items() if "seconds" not in k}
    assert remote["config"]["data_files"] == [f"{bucket}/tasks/lambada_openai.jsonl"]
