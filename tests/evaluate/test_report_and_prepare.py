"""The bias report and --prepare as a user runs them: command lines, files, bad inputs."""
import json
import subprocess
import sys

import pytest
from support import exit_of, saved_hf_model, write_jsonl

from neojax.evaluate import prepare


def _run(*args):
    return subprocess.run([sys.executable, "-m", "neojax.evaluate", *args], capture_output=True, text=True,
                          timeout=300)


def _refused(capsys, *args) -> str:
    """The one-line refusal of `evaluate ARGS` (exit code 2), run in this process."""
    from neojax.evaluate.__main__ import main
    code, err = exit_of(main, args, capsys)
    assert code == 2 and err.count("\n") <= 2, err
    return err


@pytest.mark.slow
def test_bias_report_two_checkpoints_table_json_and_chart(tiny_hf_with_tokenizer, tiny_hf_other, tmp_path):
    write_jsonl(tmp_path, "crows_pairs_english", [
        {"sent_more": "The old man was slow", "sent_less": "The young man was slow", "stereo_antistereo": "stereo",
         "bias_type": "age"},
        {"sent_more": "She cannot drive", "sent_less": "He cannot drive", "stereo_antistereo": "stereo",
         "bias_type": "gender"}])
    write_jsonl(tmp_path, "toxigen", [{"text": "you are nice", "toxicity_ai": 1, "toxicity_human": 1}])
    out = tmp_path / "report.json"
    r = _run("--bias_report", "--checkpoint", tiny_hf_with_tokenizer, "--checkpoint", tiny_hf_other,
             "--data_dir", str(tmp_path), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    table = report["table"]
    row = table["crows_pairs gender: pct_stereotype"]
    assert set(row) == {tiny_hf_with_tokenizer, tiny_hf_other} and all(v in (0.0, 1.0) for v in row.values())
    assert all(v is None for v in table["crows_pairs religion: pct_stereotype"].values())  # no data: never invented
    assert all(v is None for v in table["bbq: acc"].values())
    assert table["toxigen: acc"][tiny_hf_other] is not None
    assert "| crows_pairs religion: pct_stereotype | - | - |" in r.stdout
    png = tmp_path / "report.png"
    assert report["chart"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_ckpt = report["results"][tiny_hf_with_tokenizer]
    assert per_ckpt["crows_pairs_english_age"]["n"] == 1 and "crows_pairs_english_religion" not in per_ckpt


@pytest.fixture(scope="module")
def tiny_hf_other(tiny_tokenizer, tmp_path_factory):
    return saved_hf_model(tmp_path_factory.mktemp("tiny_hf_other"), tiny_tokenizer, seed=7, hidden_size=32,
                          num_layers=1, num_heads=4, attention_types=[[["global"], 1]], max_position_embeddings=128)


def test_bias_report_bad_inputs(tiny_hf_with_tokenizer, tmp_path, capsys):
    assert "holds none of crows_pairs_english.jsonl" in _refused(
        capsys, "--bias_report", "--checkpoint", tiny_hf_with_tokenizer, "--data_dir", str(tmp_path))
    assert "the paper table holds log-likelihood tasks and humaneval only" in _refused(
        capsys, "--paper_table", "--tasks", "wmt16-de-en", "--checkpoint", tiny_hf_with_tokenizer,
        "--data_dir", str(tmp_path))


@pytest.mark.slow
def test_prepare_writes_task_files_from_saved_datasets(tmp_path, capsys):
    import datasets
    source = tmp_path / "saved"
    rows = {"test": [{"translation": {"de": "Hallo Welt", "en": "Hello world"}}],
            "validation": [{"translation": {"de": "Guten Tag", "en": "Good day"}},
                           {"translation": {"de": "Danke", "en": "Thanks"}}]}
    for split, records in rows.items():
        datasets.Dataset.from_list(records).save_to_disk(str(source / "wmt__wmt16" / "de-en" / split))
    crows = [{"sent_more": "a", "sent_less": "b", "stereo_antistereo": "stereo", "bias_type": "age",
              "extra": 1}]
    datasets.Dataset.from_list(crows).save_to_disk(
        str(source / "jannalu__crows_pairs_multilingual" / "english" / "test"))
    data = tmp_path / "tasks"
    r = _run("--prepare", "wmt16-en-de,crows_pairs_english_age", "--data_dir", str(data),
             "--prepare_source", str(source))
    assert r.returncode == 0, r.stderr[-2000:]
    assert [json.loads(x) for x in (data / "wmt16-en-de.jsonl").read_text().splitlines()] == rows["test"]
    assert len((data / "wmt16-en-de.train.jsonl").read_text().splitlines()) == 2  # few-shot pool = validation
    assert json.loads((data / "crows_pairs_english.jsonl").read_text()) == {
        k: crows[0][k] for k in ("sent_more", "sent_less", "stereo_antistereo", "bias_type")}
    err = _refused(capsys, "--prepare", "bbq", "--data_dir", str(data), "--prepare_source", str(source))
    assert "oskarvanderwal__bbq" in err and "save_to_disk" in err
    assert "unknown task 'nosuchtask'" in _refused(capsys, "--prepare", "nosuchtask", "--data_dir", str(data))


def test_every_task_declares_its_release_and_tasks_sharing_a_file_share_it():
    from neojax.evaluate import task
    assert prepare.released() == task.names()
    by_file = {}
    for name in task.names():
        declared = task.get(name)
        assert by_file.setdefault(declared.stem, declared.release) == declared.release, name


def test_prepare_without_network_is_one_clear_line(tmp_path):
    import os
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "neojax.evaluate", "--prepare", "toxigen", "--data_dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "could not load skg/toxigen-data" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
