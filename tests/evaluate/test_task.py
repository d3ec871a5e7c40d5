"""A task declared once (neojax.evaluate.task): one section of a file makes a task that the command
line, few-shot sampling, record checks and --prepare all know; the multiple-choice factory scores
like the harness (checked against the torch reference, independently of the factory)."""
import json

import numpy as np
import pytest
import torch
from support import ref_loglikelihood, write_jsonl

from neojax import checkpoint, registry
from neojax.evaluate import __main__ as evaluate_cli
from neojax.evaluate import prepare, task

CAPITALS = [{"country": "France", "options": ["Paris", "Rome", "Madrid"], "answer": 0},
            {"country": "Italy", "options": ["Berlin", "Rome"], "answer": 1},
            {"country": "Spain", "options": ["Lisbon", "Madrid", "Oslo", "Bern"], "answer": 1}]


def declare_capitals():
    """What a user writes to add a task: one call."""
    return task.multiple_choice_task(
        "capitals", query=lambda d: f"The capital of {d['country']} is", choices=lambda d: d["options"],
        gold=lambda d: d["answer"], format='{"country", "options": [...], "answer"}',
        check=task.rules(task.texts("country"), lambda d: None if isinstance(d.get("options"), list) and
                         len(d["options"]) >= 2 else "field 'options' must list at least 2 answers",
                         lambda d: task.choice_label("answer", len(d["options"]))(d)),
        release=task.Release("someone/capitals", None, {"": "test", "train": "train"},
                             task.keep("country", "options", "answer")),
        replace=True)


@pytest.fixture
def capitals():
    with registry.scoped("task", "capitals", None):
        yield declare_capitals()


def test_a_declared_task_runs_from_the_command_line_and_matches_the_reference(capitals, tiny_hf_with_tokenizer,
                                                                             tmp_path):
    import transformers
    write_jsonl(tmp_path, "capitals", CAPITALS)
    write_jsonl(tmp_path, "capitals.train", CAPITALS)
    out = tmp_path / "r.json"
    assert evaluate_cli.main(["--checkpoint", tiny_hf_with_tokenizer, "--data_dir", str(tmp_path), "--tasks",
                              "capitals", "--output", str(out)]) == 0
    got = json.loads(out.read_text())["capitals"]
    m = checkpoint.load(tiny_hf_with_tokenizer)
    torch_model = transformers.GPTNeoForCausalLM.from_pretrained(tiny_hf_with_tokenizer).eval()
    acc, acc_norm = [], []
    with torch.no_grad():
        for d in CAPITALS:
            lls = np.array([ref_loglikelihood(torch_model, m.tokenizer, f"The capital of {d['country']} is", " " + o,
                                              m.config.max_position_embeddings)[0] for o in d["options"]])
            acc.append(np.argmax(lls) == d["answer"])
            acc_norm.append(np.argmax(lls / np.array([len(o) for o in d["options"]])) == d["answer"])
    assert got["acc"] == pytest.approx(np.mean(acc)) and got["acc_norm"] == pytest.approx(np.mean(acc_norm))
    assert got["n"] == 3
    # few-shot examples come from capitals.train.jsonl, rendered with the gold answer
    assert evaluate_cli.main(["--checkpoint", tiny_hf_with_tokenizer, "--data_dir", str(tmp_path), "--tasks",
                              "capitals", "--num_fewshot", "1"]) == 0


def test_a_declared_task_checks_its_records_and_is_known_to_prepare(capitals, tmp_path):
    write_jsonl(tmp_path, "capitals", [CAPITALS[0], {**CAPITALS[1], "answer": 2}])
    with pytest.raises(ValueError, match=r"capitals.jsonl line 2: field 'answer' must be an integer in \[0, 2\)"):
        task.load_docs(str(tmp_path), "capitals")
    assert "capitals" in prepare.released() and task.get("capitals").stem == "capitals"
    assert task.get("capitals").release.record({"country": "X", "options": ["a", "b"], "answer": 1, "id": 7}) == \
        {"country": "X", "options": ["a", "b"], "answer": 1}


def test_a_task_kind_is_one_of_the_known_kinds():
    with pytest.raises(ValueError, match="kind 'ranking' is not one of"):
        task.Task("x", lambda *a: {}, "{}", lambda d: None, kind="ranking")
    assert task.keep("a", "b") == task.keep("a", "b") != task.keep("a")
    assert set(task.names("generation")) >= {"truthfulqa_gen", "cnn_dailymail", "wmt16-de-en"}
    assert "piqa" not in task.names("generation") and "bbq" in task.names("bias")
