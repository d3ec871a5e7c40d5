"""The mitigation loop end to end: fine-tune the tiny checkpoint with counterfactual augmentation
and the bias_report hook; the report holds the start and the end side by side, the start's column
equal to evaluating the start checkpoint directly."""
import json

import pytest

from neojax import checkpoint
from neojax.evaluate import bias, evaluate
from neojax.evaluate.task import SAMPLES, available
from neojax.train.config import load_experiment
from neojax.train.loop import train

pytestmark = pytest.mark.slow  # a fine-tuning run and two passes over the bias suites

TEXT = "\n\n".join(f"{who} said that {pro} would bring {pos} {kin} to the market on day {i}."
                   for i, (who, pro, pos, kin) in enumerate([("The man", "he", "his", "brother"),
                                                              ("My father", "he", "his", "son"),
                                                              ("The king", "he", "his", "nephew")] * 20))


def test_debias_experiment_reports_before_and_after(tiny_hf_with_tokenizer, tmp_path):
    (tmp_path / "people.txt").write_text(TEXT)
    c = load_experiment("debias")
    c.model.init_from = tiny_hf_with_tokenizer
    c.data.source_args = {"paths": str(tmp_path / "people.txt"), "split": "blank_line"}
    c.data.update(source="text_files", seq_len=32, valid_fraction=0.1)
    c.train.update(total_steps=6, global_batch=8, log_every=3, report_mfu=False)
    c.checkpoint.update(every_steps=6, async_save=False)
    c.eval.update(every_steps=6, valid_batches=1, task_data_dir=SAMPLES)
    c.mesh = "data=-1"
    workdir = tmp_path / "run"
    train(c, str(workdir))
    report = json.loads((workdir / "bias_report.json").read_text())
    before, after = "before (model.init_from)", "after (step 6)"
    assert set(report["results"]) == {before, after}
    assert (workdir / "bias_report.md").read_text().startswith(f"| measure | {before} | {after} |")
    assert (workdir / "bias_report.png").stat().st_size > 1000
    start = checkpoint.load(tiny_hf_with_tokenizer)
    names = [t for t in bias.report_tasks() if t in report["results"][before]]
    assert {"crows_pairs_english", "winogender_all", "bbq", "toxigen"} <= set(names)
    assert all(available(t, SAMPLES) for t in names)
    direct = evaluate(start.params, start.config, start.tokenizer, names, SAMPLES)
    table = bias.bias_report({before: direct})
    for label, cells in report["table"].items():
        assert cells[before] == pytest.approx(table[label][before], abs=1e-6), label
    # the fine-tuned model differs from the start somewhere in the suites' log-likelihoods
    diffs = [report["results"][after]["crows_pairs_english"]["likelihood_diff"],
             report["results"][before]["crows_pairs_english"]["likelihood_diff"]]
    assert diffs[0] != diffs[1]
