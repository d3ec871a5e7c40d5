"""Faults a run survives, each ending with weights bit-identical to an uninterrupted run: a damaged
newest checkpoint (truncated array file, missing state, corrupt metadata), a partial metrics line,
a second process on the workdir, and a resume with another config."""
import fcntl
import json
import os
import shutil

import pytest
from resume_case import TOTAL, config, losses, params, same, state_data_files

from neojax.cli import UsageError
from neojax.train.loop import train
from neojax.train.workdir import LAYOUT, LOCK_NAME, Workdir


def _truncate_arrays(step_dir):
    for f in state_data_files(step_dir):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _remove_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))


def _corrupt_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write("{not json")


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncate_arrays, _remove_state, _corrupt_metadata])
def test_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes(damage, stopped_at_6, uninterrupted, corpus,
                                                                     tiny_tokenizer, capfd):
    workdir = stopped_at_6
    damage(os.path.join(workdir, "checkpoints", "6"))
    result = train(config(corpus, tiny_tokenizer), workdir)
    err = capfd.readouterr().err
    assert f"checkpoint {workdir}/checkpoints/6 is damaged" in err and "Traceback" not in err, err
    assert result["step"] == TOTAL
    assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "6"))  # moved aside, never deleted
    assert same(params(workdir), params(uninterrupted))
    assert losses(workdir) == losses(uninterrupted)


@pytest.mark.slow
def test_partial_metrics_line_is_set_aside_with_a_warning(stopped_at_6, uninterrupted, corpus, tiny_tokenizer, capfd):
    path = os.path.join(stopped_at_6, "metrics.jsonl")
    with open(path, "a") as f:
        f.write('{"step": 7, "train/lo')  # a kill in the middle of a write
    train(config(corpus, tiny_tokenizer), stopped_at_6)
    err = capfd.readouterr().err
    assert "metrics.jsonl line" in err and "set it aside" in err
    assert open(path + ".rejected").read() == '{"step": 7, "train/lo\n'
    assert same(params(stopped_at_6), params(uninterrupted))
    assert losses(stopped_at_6) == losses(uninterrupted)


@pytest.mark.slow
def test_a_garbage_line_in_the_middle_loses_no_record(stopped_at_6, uninterrupted, corpus, tiny_tokenizer, capfd):
    path = os.path.join(stopped_at_6, "metrics.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    with open(path, "w") as f:
        f.writelines(lines[:2] + ["garbage\n"] + lines[2:])
    train(config(corpus, tiny_tokenizer), stopped_at_6)
    assert "line 3 is not a complete record" in capfd.readouterr().err
    assert losses(stopped_at_6) == losses(uninterrupted)  # every record after the bad line kept
    assert open(path + ".rejected").read() == "garbage\n"


@pytest.mark.slow
def test_second_process_is_refused_with_the_holders_pid(stopped_at_6, uninterrupted, corpus, tiny_tokenizer):
    with open(os.path.join(stopped_at_6, LOCK_NAME), "a+") as holder:  # another training process's lock
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.seek(0)
        holder.truncate()
        holder.write("4242\n")
        holder.flush()
        before = sorted(os.listdir(os.path.join(stopped_at_6, "checkpoints")))
        with pytest.raises(UsageError, match="in use by another training process \\(pid 4242\\)"):
            train(config(corpus, tiny_tokenizer), stopped_at_6)
        assert sorted(os.listdir(os.path.join(stopped_at_6, "checkpoints"))) == before
    train(config(corpus, tiny_tokenizer), stopped_at_6)  # once it is gone, the run resumes
    assert same(params(stopped_at_6), params(uninterrupted))


@pytest.mark.slow
def test_resume_with_another_config_is_refused_and_changes_nothing(stopped_at_6, uninterrupted, corpus, tiny_tokenizer):
    workdir = stopped_at_6
    watched = ["config.json", "metrics.jsonl", os.path.join("model", "neojax.json")]
    before = {name: open(os.path.join(workdir, name), "rb").read() for name in watched}
    for changes, keys in [({"data__seed": 7}, "data.seed: 0 -> 7"), ({"data__seq_len": 8}, "data.seq_len: 16 -> 8"),
                          ({"train__global_batch": 16}, "train.global_batch: 8 -> 16")]:
        with pytest.raises(UsageError, match="holds a run with another config.*" + keys.replace(".", "\\.")):
            train(config(corpus, tiny_tokenizer, **changes), workdir)
        assert {name: open(os.path.join(workdir, name), "rb").read() for name in watched} == before
    train(config(corpus, tiny_tokenizer, eval__every_steps=100), workdir)  # cadence may change
    assert same(params(workdir), params(uninterrupted))


@pytest.mark.slow
def test_changed_learning_rate_is_allowed_and_said(stopped_at_6, corpus, tiny_tokenizer, capfd):
    train(config(corpus, tiny_tokenizer, optimizer__lr=1e-3), stopped_at_6)
    out = capfd.readouterr().out
    assert "resuming with changed optimizer settings: optimizer.lr: 0.01 -> 0.001" in out
    assert json.load(open(os.path.join(stopped_at_6, "config.json")))["optimizer"]["lr"] == 1e-3


def test_readers_skip_a_damaged_newest_checkpoint_and_move_nothing(stopped_at_6, first_six_steps, capfd):
    """What generate, evaluate and convert load (checkpoint.load of a workdir): the newest intact
    checkpoint, the damaged one named in a warning; none intact is an error."""
    from neojax.checkpoint.io import load_workdir
    _truncate_arrays(os.path.join(stopped_at_6, "checkpoints", "6"))
    _, got, _ = load_workdir(stopped_at_6)
    err = capfd.readouterr().err
    assert f"warning: {stopped_at_6}: checkpoint 6 is damaged" in err and "using step 3" in err, err
    assert same(got, load_workdir(first_six_steps, step=3)[1])
    _remove_state(os.path.join(stopped_at_6, "checkpoints", "3"))
    with pytest.raises(ValueError, match="checkpoint 3 cannot be read .*; no intact checkpoint is left"):
        load_workdir(stopped_at_6)
    assert not os.path.exists(os.path.join(stopped_at_6, "damaged_checkpoints"))  # only training moves them


def test_every_checkpoint_damaged_is_an_error_not_a_silent_restart(stopped_at_6, corpus, tiny_tokenizer):
    for step in ("3", "6"):
        _remove_state(os.path.join(stopped_at_6, "checkpoints", step))
    with pytest.raises(UsageError, match="every checkpoint is damaged"):
        train(config(corpus, tiny_tokenizer), stopped_at_6)
    assert sorted(os.listdir(os.path.join(stopped_at_6, "damaged_checkpoints"))) == ["3", "6"]


def test_workdir_checks_come_before_any_write(tmp_path, corpus, tiny_tokenizer):
    file = tmp_path / "a_file"
    file.write_text("mine")
    with pytest.raises(UsageError, match="is a file"):
        train(config(corpus, tiny_tokenizer), str(file))
    assert file.read_text() == "mine"
    with Workdir.open(config(corpus, tiny_tokenizer), str(tmp_path / "w")):  # only the lock file so far
        assert os.listdir(tmp_path / "w") == [LOCK_NAME]


@pytest.mark.parametrize("name,folder", sorted(LAYOUT.items()))
def test_an_entry_of_the_wrong_kind_is_refused_before_training(name, folder, corpus, tiny_tokenizer, tmp_path):
    """checkpoints/ replaced by a file (or config.json by a folder) would restart the run from step 0
    and fail only later: it is one line before any work, and the workdir is left as it was."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    entry = workdir / name
    if folder:
        entry.write_text("not a folder")
    else:
        entry.mkdir()
    with pytest.raises(UsageError, match=f"{name} is (a regular file|a directory), where the run "
                                         f"keeps a {'folder' if folder else 'file'}"):
        train(config(corpus, tiny_tokenizer), str(workdir))
    assert sorted(os.listdir(workdir)) == [name]
