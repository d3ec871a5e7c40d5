"""lm-evaluation-harness's `local-completions` backend against the server gives the numbers
`neojax.evaluate` gives on the same checkpoint and documents (relative difference < 1e-4), and its
`humaneval` task the completions `evaluate --tasks humaneval` generates in-process."""
import json
import subprocess
import sys
import textwrap

import pytest
from support import harness_humaneval_task

from neojax import evaluate as ev
from neojax.evaluate import code
from neojax.evaluate.harness import Scorer

pytestmark = pytest.mark.slow  # a real server under load (the fast subset: -m 'not slow')

TEXTS = ["the quick brown fox jumps over the lazy dog", "once upon a time there was a model",
         "GPT-Neo generates text one token at a time", "def hello(): print('hi') and then some"]


def test_lm_eval_local_completions_matches_neojax_evaluate(server, tiny, tiny_hf_with_tokenizer, tmp_path):
    lam = tmp_path / "lambada_openai.jsonl"
    lam.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text("".join(json.dumps({"goal": t, "sol1": "yes it is", "sol2": "no", "label": i % 2}) + "\n"
                            for i, t in enumerate(TEXTS)))
    tasks = tmp_path / "yaml"
    tasks.mkdir()
    (tasks / "tiny_lambada.yaml").write_text(textwrap.dedent(f"""
        task: tiny_lambada
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {lam}}}}}
        test_split: test
        output_type: loglikelihood
        doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
        doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
        metric_list:
          - {{metric: perplexity, aggregation: perplexity, higher_is_better: false}}
          - {{metric: acc, aggregation: mean, higher_is_better: true}}
        """))
    (tasks / "tiny_piqa.yaml").write_text(textwrap.dedent(f"""
        task: tiny_piqa
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {piqa}}}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
        doc_to_target: label
        doc_to_choice: "{{{{[sol1, sol2]}}}}"
        metric_list:
          - {{metric: acc, aggregation: mean, higher_is_better: true}}
          - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
        """))
    problems = [{"task_id": f"Tiny/{i}", "prompt": f"def f{i}(x):\n    \"\"\"{t}\"\"\"\n", "entry_point": f"f{i}",
                 "test": "def check(c):\n    assert c(1) == 1\n"} for i, t in enumerate(TEXTS)]
    (tmp_path / "humaneval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    harness_humaneval_task(tasks, tmp_path / "humaneval.jsonl", max_gen_toks=24)
    # the harness's command line, in its own process (as a user runs it, and no fork of this JAX process)
    r = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args",
                        f"model=tiny,base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                        f"tokenizer={tiny_hf_with_tokenizer},tokenized_requests=True,max_length=128,num_concurrent=4",
                        "--tasks", "tiny_lambada,tiny_piqa,humaneval_local", "--include_path", str(tasks),
                        "--num_fewshot", "0", "--output_path", str(tmp_path / "out"), "--log_samples"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    logged = next((tmp_path / "out").rglob("samples_humaneval_local_*.jsonl"))
    completions = [json.loads(line) for line in logged.open()]
    ours = Scorer(tiny.params, tiny.config, tiny.tokenizer, 8).generate_until(
        [(p["prompt"], list(code.STOP), 24) for p in problems])
    assert [c["resps"][0][0] for c in sorted(completions, key=lambda c: c["doc_id"])] == ours
    assert any(len(t) > 5 for t in ours)
    ours = ev.evaluate(tiny.params, tiny.config, tiny.tokenizer, ["lambada_openai", "piqa"], str(tmp_path))
    assert theirs["tiny_lambada"]["perplexity,none"] == pytest.approx(ours["lambada_openai"]["perplexity"], rel=1e-4)
    assert theirs["tiny_lambada"]["acc,none"] == ours["lambada_openai"]["acc"]
    assert theirs["tiny_piqa"]["acc,none"] == ours["piqa"]["acc"]
    assert theirs["tiny_piqa"]["acc_norm,none"] == ours["piqa"]["acc_norm"]
