"""Classification fine-tuning: a tiny model learns a separable task from jsonl through the train
command, the exported head loads in transformers, and the metrics match their definitions."""
import json
import subprocess
import sys

import numpy as np
import pytest
from support import device_env

from neojax.data.sources import DataError
from neojax.finetune.classify import classification_report, read_examples

POSITIVE = ["good", "great", "happy", "lovely", "fine", "excellent"]
NEGATIVE = ["bad", "awful", "sad", "poor", "terrible", "ugly"]


def write_task(path, n, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            label = int(rng.integers(0, 2))
            words = rng.choice(POSITIVE if label else NEGATIVE, size=int(rng.integers(2, 7)))
            f.write(json.dumps({"text": "the movie was " + " ".join(words), "label": ["neg", "pos"][label]}) + "\n")


@pytest.mark.slow
def test_tiny_model_learns_a_separable_task_from_the_command_line(tiny_hf_with_tokenizer, tmp_path):
    import torch
    import transformers
    write_task(tmp_path / "train.jsonl", 256, 0)
    write_task(tmp_path / "valid.jsonl", 64, 1)
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "neojax.train", "--config", "sentiment", "--workdir", str(workdir),
                        f"--config.model.init_from={tiny_hf_with_tokenizer}",
                        f"--config.classify.train={tmp_path / 'train.jsonl'}",
                        f"--config.classify.valid={tmp_path / 'valid.jsonl'}",
                        "--config.data.seq_len=64", "--config.train.total_steps=120", "--config.train.log_every=20",
                        "--config.optimizer.lr=3e-3", "--config.optimizer.warmup_steps=5",
                        "--config.eval.every_steps=60"],
                       capture_output=True, text=True, timeout=600, env=device_env(1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tok/s" in r.stdout and "accuracy" in r.stdout and "macro F1" in r.stdout
    report = json.loads((workdir / "report.json").read_text())
    assert report["accuracy"] >= 0.95 and report["n"] == 64 and set(report["per_class"]) == {"neg", "pos"}
    # The exported directory is a transformers classifier that agrees with the report.
    model = transformers.GPTNeoForSequenceClassification.from_pretrained(str(workdir / "hf")).eval()
    assert model.config.id2label == {0: "neg", 1: "pos"}
    from neojax.data.tokenizer import Tokenizer
    tok = Tokenizer.from_path(str(workdir / "hf"))
    texts, labels = read_examples(str(tmp_path / "valid.jsonl"))
    assert max(len(tok.encode(t)) for t in texts) <= 64  # nothing was truncated for the report
    correct = 0
    for text, label in zip(texts, labels):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok.encode(text)])).logits
        correct += model.config.id2label[int(logits.argmax())] == label
    assert correct / len(texts) == pytest.approx(report["accuracy"], abs=1e-9)


def test_report_matches_hand_counts():
    # golds: a a a b b c ; predictions: a a b b c c
    report = classification_report([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"]) == (0.5, 0.5)
    assert (c["precision"], c["recall"], c["f1"]) == (0.5, 1.0, pytest.approx(2 / 3))
    assert report["macro_f1"] == pytest.approx(np.mean([0.8, 0.5, 2 / 3]))


def test_bad_records_name_the_fields(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"sentence": "hi", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:1: needs a string 'text'.*classify.text_field.*sentence"):
        read_examples(str(path))
    texts, labels = read_examples(str(path), text_field="sentence")
    assert texts == ["hi"] and labels == [1]


def test_tfds_classification_data_without_download():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=5):
        texts, labels = read_examples("tfds:imdb_reviews", split="train")
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts) and set(labels) <= {0, 1}


def _sentiment(workdir, tmp_path, hf_dir):
    return subprocess.Popen([sys.executable, "-m", "neojax.train", "--config", "sentiment", "--workdir", str(workdir),
                             f"--config.model.init_from={hf_dir}",
                             f"--config.classify.train={tmp_path / 'train.jsonl'}",
                             f"--config.classify.valid={tmp_path / 'valid.jsonl'}", "--config.data.seq_len=32",
                             "--config.train.total_steps=12", "--config.train.log_every=1",
                             "--config.train.global_batch=8", "--config.checkpoint.every_steps=3",
                             "--config.checkpoint.async_save=false", "--config.eval.every_steps=6",
                             "--config.optimizer.lr=3e-3", "--config.optimizer.warmup_steps=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=device_env(1))


def _weights(workdir):
    import safetensors.numpy
    return safetensors.numpy.load_file(str(workdir / "hf" / "model.safetensors"))


@pytest.mark.slow
def test_classification_killed_and_rerun_is_bitwise_identical(tiny_hf_with_tokenizer, tmp_path):
    """Classification trains in the one loop: checkpoints, SIGKILL and resume as every run."""
    import signal
    write_task(tmp_path / "train.jsonl", 64, 0)
    write_task(tmp_path / "valid.jsonl", 16, 1)
    ref = _sentiment(tmp_path / "ref", tmp_path, tiny_hf_with_tokenizer)
    out = ref.communicate(timeout=600)[0]
    assert ref.returncode == 0, out[-3000:]
    killed = _sentiment(tmp_path / "killed", tmp_path, tiny_hf_with_tokenizer)
    for line in killed.stdout:
        if line.startswith("step 7/"):  # checkpoint 6 is on disk
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(timeout=120)
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "killed" / "hf").exists()
    rerun = _sentiment(tmp_path / "killed", tmp_path, tiny_hf_with_tokenizer)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0 and "resumed from" in out, out[-3000:]
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "ref" / "report.json").read_text()) == \
        json.loads((tmp_path / "killed" / "report.json").read_text())
