"""The task folder that ships with neojax: every registered task reads records from it, and
`evaluate --sample_tasks` runs every task offline on a tiny model (the first hour's command)."""
import json

from neojax import registry
from neojax.evaluate import __main__ as evaluate_cli
from neojax.evaluate.task import SAMPLES, load_docs


def test_every_task_has_sample_records():
    for task in registry.names("task"):
        assert load_docs(SAMPLES, task), task
    for few_shot in ("piqa", "hellaswag", "winogrande", "mathqa"):
        assert load_docs(SAMPLES, few_shot, "train"), few_shot


def test_evaluate_runs_every_task_on_the_samples(tiny_hf_with_tokenizer, tmp_path):
    out = tmp_path / "r.json"
    tasks = ",".join(registry.names("task"))
    assert evaluate_cli.main(["--checkpoint", tiny_hf_with_tokenizer, "--sample_tasks", "--tasks", tasks, "--limit",
                              "2", "--max_gen_toks", "4", "--allow_code_execution", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(registry.names("task")) <= set(results)
    assert all(results[t]["n"] >= 1 for t in registry.names("task"))
    assert evaluate_cli.main(["--checkpoint", tiny_hf_with_tokenizer, "--sample_tasks", "--tasks", "piqa",
                              "--num_fewshot", "1"]) == 0
