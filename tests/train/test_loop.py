"""The training loop: exact resume (also after SIGKILL), SIGTERM, non-finite guard, accumulation,
restore onto another mesh, and the command line."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sharding_case import CASE_CONFIG, case_batch, case_optimizer
from support import device_env, small_config

from neojax import checkpoint, sharding
from neojax.checkpoint.manager import Checkpointer
from neojax.train.loop import NonFiniteError, train
from neojax.train.metrics import read_metrics
from neojax.train.step import init_state, make_train_step, sharded_init

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _losses(workdir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]


def _params(workdir):
    return checkpoint.load(workdir).params


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def eight_steps(corpus, tiny_tokenizer, tmp_path_factory):
    """An uninterrupted 8-step run."""
    workdir = str(tmp_path_factory.mktemp("eight_steps"))
    result = train(small_config(corpus, tiny_tokenizer.source), workdir)
    assert result["step"] == 8
    return workdir


@pytest.mark.slow
def test_workdir_holds_the_run(eight_steps):
    names = set(os.listdir(eight_steps))
    assert {"config.json", "metrics.jsonl", "checkpoints", "tb", "model", "data_cache"} <= names
    metrics = read_metrics(eight_steps)
    assert [m["step"] for m in metrics if "train/loss" in m] == list(range(1, 9))
    valid = [m for m in metrics if "valid/loss" in m]
    assert [m["step"] for m in valid] == [4, 8] and valid[-1]["valid/loss"] < valid[-1]["valid/unigram_loss"] + 1
    last_train = [m for m in metrics if "train/loss" in m][-1]
    assert {"train/tokens_per_sec", "train/lr", "train/grad_norm"} <= set(last_train)
    assert {"valid/perplexity", "valid/bits_per_byte", "valid/unigram_loss"} <= set(valid[-1])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(eight_steps, "tb")))
    assert json.load(open(os.path.join(eight_steps, "config.json")))["train"]["total_steps"] == 8


@pytest.mark.slow
def test_harness_tasks_run_as_a_training_hook(eight_steps, corpus, tiny_tokenizer, tmp_path):
    (tmp_path / "lambada_openai.jsonl").write_text("".join(
        json.dumps({"text": f"the quick brown fox jumps over the lazy dog {i}"}) + "\n" for i in range(3)))
    (tmp_path / "crows_pairs_english.jsonl").write_text(json.dumps(
        {"sent_more": "the old dog", "sent_less": "the young dog", "stereo_antistereo": "stereo", "bias_type": "age"}))
    (tmp_path / "wmt16-de-en.jsonl").write_text(json.dumps({"translation": {"de": "der hund", "en": "the dog"}}))
    c = small_config(corpus, tiny_tokenizer.source, total_steps=2)
    c.model.overrides["max_position_embeddings"] = 300  # room for the harness's 256 generated tokens
    c.eval.update(every_steps=2, hooks=["tasks"], tasks=["lambada_openai", "crows_pairs_english_age", "wmt16-de-en"],
                  task_data_dir=str(tmp_path))
    train(c, str(tmp_path / "w"))
    logged = [m for m in read_metrics(str(tmp_path / "w")) if "lambada_openai/acc" in m]
    assert logged and logged[0]["step"] == 2 and logged[0]["lambada_openai/perplexity"] > 1
    assert logged[0]["crows_pairs_english_age/pct_stereotype"] in (0.0, 1.0)
    assert {"wmt16-de-en/bleu", "wmt16-de-en/chrf", "wmt16-de-en/ter"} <= set(logged[0])


@pytest.mark.slow
def test_resume_in_process_is_bitwise(eight_steps, corpus, tiny_tokenizer, tmp_path):
    train(small_config(corpus, tiny_tokenizer.source, total_steps=4), str(tmp_path))
    train(small_config(corpus, tiny_tokenizer.source, total_steps=8), str(tmp_path))  # resumes at 4
    assert _same(_params(str(tmp_path)), _params(eight_steps))
    assert _losses(str(tmp_path)) == _losses(eight_steps)


def _experiment_file(tmp_path, corpus, tokenizer_dir, total_steps):
    path = tmp_path / "resume_case.py"
    path.write_text(textwrap.dedent(f'''
        """python -m neojax.train --config {path} --workdir DIR"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        from support import device_env, small_config
        from neojax.train.config import lock

        def get_config():
            c = small_config({corpus!r}, {tokenizer_dir!r}, total_steps={total_steps})
            c.checkpoint.every_steps = 3
            return lock(c)
    '''))
    return str(path)


def _start(config_path, workdir, log):
    return subprocess.Popen([sys.executable, "-m", "neojax.train", "--config", config_path, "--workdir", workdir],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_for(log, text, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in open(log).read():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} never appeared in {log}")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bitwise(corpus, tiny_tokenizer, tmp_path):
    total = 12
    config_path = _experiment_file(tmp_path, corpus, tiny_tokenizer.source, total)
    ref = str(tmp_path / "ref")
    proc = _start(config_path, ref, tmp_path / "ref.log")
    assert proc.wait(timeout=300) == 0, open(tmp_path / "ref.log").read()[-2000:]
    workdir = str(tmp_path / "killed")
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        log = tmp_path / f"run{attempt}.log"
        proc = _start(config_path, workdir, log)
        if attempt == 2 or not _wait_for(log, "step ", proc):
            break
        time.sleep(rng.uniform(0.0, 1.0))  # a save every 3 steps (~1 s each here): kills land inside some
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # A save killed half way leaves orbax's temporary directory; fake one too, for certain.
        os.makedirs(os.path.join(workdir, "checkpoints", "999.orbax-checkpoint-tmp-1"), exist_ok=True)
    assert proc.wait(timeout=300) == 0, open(log).read()[-2000:]
    assert kills >= 2
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]
    assert _same(_params(workdir), _params(ref))
    assert _losses(workdir) == _losses(ref)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(corpus, tiny_tokenizer, tmp_path):
    config_path = _experiment_file(tmp_path, corpus, tiny_tokenizer.source, 400)
    log = tmp_path / "run.log"
    proc = _start(config_path, str(tmp_path / "w"), log)
    assert _wait_for(log, "step 3/", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143  # preempted, not done: schedulers restart it
    out = open(log).read()
    assert "SIGTERM: saved step" in out and "preempted (SIGTERM)" in out and "resume with the same command" in out
    assert "done:" not in out
    saved = int(out.split("SIGTERM: saved step ")[1].split()[0])
    assert Checkpointer(str(tmp_path / "w" / "checkpoints")).latest_step() == saved


@pytest.mark.slow
def test_nonfinite_run_stops_with_last_good_checkpoint(corpus, tiny_tokenizer, tmp_path, caplog):
    train(small_config(corpus, tiny_tokenizer.source, total_steps=4), str(tmp_path))
    good = _params(str(tmp_path))
    blowup = small_config(corpus, tiny_tokenizer.source, total_steps=20, max_nonfinite_streak=2)
    blowup.optimizer.lr = 1e30  # params explode at step 5, gradients are NaN/Inf from then on
    blowup.checkpoint.every_steps = 100
    with pytest.raises(NonFiniteError, match="2 consecutive steps had NaN/Inf gradients.*last good checkpoint"):
        train(blowup, str(tmp_path))
    skipped = [r.getMessage() for r in caplog.records if "skipped for non-finite gradients" in r.getMessage()]
    assert skipped and skipped[-1].endswith("(2 in a row now)"), skipped  # said at the log steps (every step here)
    assert Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 4
    assert _same(_params(str(tmp_path)), good)


@pytest.mark.slow
def test_nonfinite_step_changes_nothing_but_counters():
    optimizer = case_optimizer()
    state = init_state(CASE_CONFIG, optimizer, jax.random.PRNGKey(0))
    bad = state.replace(params={**state.params, "wte": state.params["wte"].at[3, 3].set(jnp.nan)})
    before = jax.tree.map(np.asarray, bad)
    after, metrics = make_train_step(CASE_CONFIG, optimizer)(bad, case_batch())
    assert not bool(metrics["finite"])
    assert int(after.nonfinite_streak) == 1 and int(after.nonfinite_total) == 1 and int(after.step) == 1
    for a, b in zip(jax.tree.leaves(after.params) + jax.tree.leaves(after.opt_state),
                    jax.tree.leaves(before.params) + jax.tree.leaves(before.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), b)  # NaN where NaN was, nothing else touched


@pytest.mark.slow
def test_gradient_accumulation_equals_a_larger_batch():
    tx = optax.sgd(0.5)
    tokens = case_batch(batch=8)
    one = make_train_step(CASE_CONFIG, tx)(init_state(CASE_CONFIG, tx, jax.random.key(0)), tokens)
    four = make_train_step(CASE_CONFIG, tx, microbatches=4)(init_state(CASE_CONFIG, tx, jax.random.key(0)), tokens)
    assert abs(float(one[1]["loss"]) - float(four[1]["loss"])) < 1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), one[0].params, four[0].params)


@pytest.mark.slow
def test_restore_onto_another_mesh_and_back(tmp_path):
    optimizer = case_optimizer()
    mesh8 = sharding.make_mesh("fsdp=4,tensor=2")
    state = sharded_init(CASE_CONFIG, optimizer, mesh8, jax.random.PRNGKey(0))
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, state, {"next_index": 3}, {"step": 1})
    ckpt.wait()
    from neojax.train.step import state_specs
    abstract = jax.eval_shape(lambda: state)
    one = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
    target = lambda mesh: jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                       sharding.shardings(mesh, state_specs(CASE_CONFIG, abstract, mesh=mesh)))
    single, data_state, _ = ckpt.restore(target(one))
    assert data_state == {"next_index": 3}
    assert single.params["wte"].sharding.mesh.devices.size == 1
    assert _same(jax.device_get(single), jax.device_get(state))
    ckpt.save(2, single, data_state, {"step": 2})
    ckpt.wait()
    back, _, _ = ckpt.restore(target(mesh8))
    assert back.params["wte"].sharding.spec == state.params["wte"].sharding.spec
    assert _same(jax.device_get(back), jax.device_get(state))
    bigger = CASE_CONFIG.replace(hidden_size=128)
    wrong = jax.eval_shape(lambda: init_state(bigger, optimizer, jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="does not fit this run's state"):
        ckpt.restore(wrong)


def _cli(*args):
    """As a user runs it: the machine's real device count (one CPU device), not the test mesh's 8."""
    env = device_env(1)
    return subprocess.run([sys.executable, "-m", "neojax.train", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)


@pytest.mark.slow
def test_cli_list_unknown_names_and_typos(tmp_path, capsys):
    from neojax import cli
    from neojax.train.__main__ import main

    def run(*argv):  # in this process: a refusal comes before anything would run
        code = cli.run(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    code, out, _ = run("--list")
    assert code == 0 and "quickstart" in out and "gpt_neo_2p7b_pile" in out
    assert "attention: alibi, global, linear, local, rotary" in out
    assert "schedule: constant, cosine, linear" in out
    from neojax.train import schema
    keys = [line.split()[0] for line in out.split("config keys")[1].splitlines()[1:]]
    assert keys == [k for k, _ in schema.fields()]  # every key the schema declares, with its default and meaning
    assert "data.transform_mode" in out and "also: each document and its transformed copy" in out
    for argv, words in [(["--config", "quickstrat"], ["unknown experiment 'quickstrat'", "quickstart"]),
                        (["--config", "quickstart:smoke", "--config.train.totl_steps=3"], ["totl_steps"]),
                        (["--config", "quickstart:nope"], ["variants: '' (default), 'smoke'"]),
                        (["--config", "quickstart:smoke", "--config.mesh=data=3,fsdp=-1"],
                         ["devices are not divisible by 3"])]:
        code, _, err = run(*argv, "--workdir", str(tmp_path / "w"))
        assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), (argv, err)
    assert not (tmp_path / "w").exists()  # refused before the workdir was made


@pytest.mark.slow
def test_quickstart_smoke_runs_from_the_command_line(tmp_path):
    """The smoke variant from the command line, MFU on: the logged MFU is the logged tokens/s times the
    model's FLOPs a token over the peak the run printed."""
    from neojax.flops import train_flops_per_token
    workdir = str(tmp_path / "qs")
    r = _cli("--config", "experiments/quickstart.py:smoke", "--workdir", workdir, "--config.train.total_steps=4",
             "--config.train.report_mfu=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 4/4" in r.stdout and "valid @ 3" in r.stdout and "python -m neojax.generate" in r.stdout
    model = checkpoint.load(workdir)
    assert model.tokenizer.kind == "sentencepiece" and model.config.vocab_size == 512
    said = re.search(r"mfu against ([\d,.]+) ([GT])FLOP/s: the float32 matmul peak measured here, for 1 device\(s\); "
                     r"([\d,]+) FLOPs a token", r.stdout)
    peak = float(said[1].replace(",", "")) * {"G": 1e9, "T": 1e12}[said[2]]
    per_token = int(said[3].replace(",", ""))
    seq_len = json.load(open(os.path.join(workdir, "config.json")))["data"]["seq_len"]
    assert per_token == round(train_flops_per_token(model.config, seq_len))
    records = read_metrics(workdir)
    assert all(len(m) > 1 for m in records)  # the samples hook's text goes to TensorBoard, not as an empty record
    logged = [m for m in records if "train/loss" in m]
    assert len(logged) >= 2 and all(0 < m["train/mfu"] < 1 for m in logged)
    for m in logged:
        assert m["train/mfu"] == pytest.approx(m["train/tokens_per_sec"] * per_token / peak, rel=5e-3)


def test_every_experiment_loads_and_documents_its_command():
    import importlib.util

    from neojax.train.__main__ import experiments
    found = experiments()
    assert {"quickstart", "gpt_neo_125m_pile", "gpt_neo_1p3b_pile", "gpt_neo_2p7b_pile", "finetune_hf"} <= set(found)
    for name, path in found.items():
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.__doc__.startswith(f"python -m neojax.train --config experiments/{name}.py"), name
        c = module.get_config()
        assert c.is_locked
        with pytest.raises(AttributeError):
            c.train.totl_steps = 1
    big = importlib.util.module_from_spec(importlib.util.spec_from_file_location("x", found["gpt_neo_2p7b_pile"]))
    importlib.util.spec_from_file_location("x", found["gpt_neo_2p7b_pile"]).loader.exec_module(big)
    c = big.get_config()
    assert (c.optimizer.b2, c.optimizer.warmup_steps, c.optimizer.final_lr_ratio, c.optimizer.clip) == (0.95, 3000,
                                                                                                        0.1, 1.0)
    assert (c.train.global_batch, c.data.seq_len, c.model.dtype) == (512, 2048, "bfloat16")
    from neojax.train.optim import decay_mask
    mask = decay_mask({"ln_f": {"scale": 0, "bias": 0}, "h_0": {"mlp": {"c_fc": {"kernel": 0, "bias": 0}}}, "wte": 0})
    assert mask == {"ln_f": {"scale": False, "bias": False}, "h_0": {"mlp": {"c_fc": {"kernel": True, "bias": False}}},
                    "wte": True}


@pytest.mark.slow
def test_a_run_with_the_transform_trains_on_swapped_copies_and_resumes_exactly(corpus, tiny_tokenizer, tmp_path):
    """The transform is part of the token cache: the augmented cache holds each changed document
    twice (original, then swapped), and a run stopped halfway resumes bit for bit."""
    from neojax.data.pipeline import build_token_cache
    from neojax.data.tokenizer import Tokenizer

    tok = Tokenizer.from_path(tiny_tokenizer.source)
    text = tmp_path / "people.txt"
    text.write_text("He said his father was tired.\n\nThe sky is blue.\n\nShe met her aunt.\n")
    args = {"paths": str(text), "split": "blank_line"}
    plain = build_token_cache("text_files", args, tok, str(tmp_path / "c"), valid_fraction=0, progress=False)
    also = build_token_cache("text_files", args, tok, str(tmp_path / "c"), valid_fraction=0, progress=False,
                             transform=("counterfactual", {}, "also"))
    assert plain.directory != also.directory and also.meta["documents"] == 5
    decoded = tok.decode(np.asarray(also.train).tolist())
    assert "She said her mother was tired." in decoded and "He met his uncle." in decoded
    assert decoded.count("The sky is blue.") == 1

    def config(steps):
        c = small_config(corpus, tiny_tokenizer.source, total_steps=steps)
        c.data.transform = "counterfactual"
        return c
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    train(config(8), whole)
    train(config(4), halves)
    train(config(8), halves)
    assert _same(_params(whole), _params(halves)) and _losses(whole) == _losses(halves)
