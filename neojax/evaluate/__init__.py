"""Harness-exact evaluation, generic perplexity / bits per byte, and the GPT-Neo paper table.

    from neojax.evaluate import evaluate
    results = evaluate(params, config, tokenizer, ["lambada_openai", "wikitext"], data_dir="tasks/")
"""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

from neojax import sharding
from neojax.evaluate import bias as _bias  # noqa: F401  (declares the bias suites)
from neojax.evaluate import code as _code  # noqa: F401  (declares humaneval)
from neojax.evaluate import generation as _generation  # noqa: F401  (declares the generation tasks)
from neojax.evaluate import task
from neojax.evaluate.code import CodeSettings
from neojax.evaluate.harness import Scorer
from neojax.evaluate.paper import perplexity_of_texts
from neojax.evaluate.task import load_docs

# GPT-Neo README (EleutherAI's harness), and the Codex paper's HumanEval rows below: model -> column -> value
# (fractions for accuracies and pass rates).
PUBLISHED = {
    "GPT-Neo 125M": {"Wikitext PPL": 32.285, "Lambada PPL": 30.266, "Lambada Acc": 0.3736, "Winogrande": 0.5043,
                     "Hellaswag": 0.2867, "MathQA": 0.2278, "PubMedQA": 0.5510, "PIQA": 0.6306},
    "GPT-Neo 350M": {"Wikitext PPL": 22.5657, "Lambada PPL": 13.876, "Lambada Acc": 0.4727, "Winogrande": 0.5114,
                     "Hellaswag": 0.3216, "MathQA": 0.2345, "PubMedQA": 0.5380, "PIQA": 0.6507},
    "GPT-Neo 1.3B": {"Pile BPB": 0.7527, "Pile PPL": 6.159, "Wikitext PPL": 13.10, "Lambada PPL": 7.498,
                     "Lambada Acc": 0.5723, "Winogrande": 0.5501, "Hellaswag": 0.3866, "MathQA": 0.2405,
                     "PubMedQA": 0.5440, "PIQA": 0.7111},
    "GPT-Neo 2.7B": {"Pile BPB": 0.7165, "Pile PPL": 5.646, "Wikitext PPL": 11.39, "Lambada PPL": 5.626,
                     "Lambada Acc": 0.6222, "Winogrande": 0.5650, "Hellaswag": 0.4273, "MathQA": 0.2472,
                     "PubMedQA": 0.5754, "PIQA": 0.7214},
}
# The Codex paper (Chen et al. 2021, Table 1): HumanEval pass@k of GPT-Neo, n = 200 samples per problem.
CODEX = {"GPT-Neo 125M": (0.0075, 0.0188, 0.0297), "GPT-Neo 1.3B": (0.0479, 0.0747, 0.1630),
         "GPT-Neo 2.7B": (0.0641, 0.1127, 0.2137)}
CODE_COLUMNS = ["HumanEval pass@1", "HumanEval pass@10", "HumanEval pass@100"]
for _model, _values in CODEX.items():
    PUBLISHED[_model].update(zip(CODE_COLUMNS, _values))
COLUMNS = ["Pile BPB", "Pile PPL", "Wikitext PPL", "Lambada PPL", "Lambada Acc", "Winogrande", "Hellaswag",
           "MathQA", "PubMedQA", "PIQA", *CODE_COLUMNS]
# column -> (task, metric): the Pile's from the texts given (--text_files / --jsonl), the rest as each task declares
SOURCES = {"Pile BPB": ("pile", "bits_per_byte"), "Pile PPL": ("pile", "perplexity"),
           **{column: (name, metric) for name in task.names() for column, metric in task.get(name).columns.items()}}
PERCENT = {"Lambada Acc", "Winogrande", "Hellaswag", "MathQA", "PubMedQA", "PIQA", *CODE_COLUMNS}


def evaluate(params, config, tokenizer, task_names: Sequence[str], data_dir: str, num_fewshot: int = 0,
             limit: int = 0, batch_size: int = 8, max_len: Optional[int] = None,
             tfds_data_dir: Optional[str] = None, loaded: Optional[dict] = None,
             max_gen_toks: Optional[int] = None, code: Optional[CodeSettings] = None) -> dict:
    """task -> metric -> value, plus n (examples), seconds and tokens scored per task. `loaded`
    (task -> (records, few-shot records)) spares reading files a caller already read and checked;
    `max_gen_toks` replaces the generation tasks' own lengths; `code`: how code tasks (humaneval)
    sample and execute (its per-sample records under "records")."""
    out = {}
    for name in task_names:
        declared = task.get(name)
        if num_fewshot and declared.zero_shot:
            raise ValueError(f"num_fewshot={num_fewshot}: {name} is zero-shot ({declared.zero_shot}); use 0")
        docs, train_docs = (loaded or {}).get(name) or load_task(data_dir, name, num_fewshot, tfds_data_dir)
        docs = docs[:limit] if limit else docs
        scorer = Scorer(params, config, tokenizer, batch_size, max_len, label=name, max_gen_toks=max_gen_toks)
        start = time.perf_counter()
        options = {"settings": code or CodeSettings()} if declared.kind == "code" else {}
        metrics = declared.run(scorer, docs, train_docs, num_fewshot, **options)
        seconds = time.perf_counter() - start
        out[name] = {**metrics, "n": len(docs), "num_fewshot": num_fewshot, "seconds": seconds,
                     "tokens_scored": scorer.tokens_scored}
        if scorer.tokens_generated:
            out[name]["tokens_generated"] = scorer.tokens_generated
        if scorer.truncated:  # a score on a shortened context (the harness's rule) is not the full-context score
            out[name]["truncated_requests"] = scorer.truncated
            if sharding.is_lead_process():
                print(f"warning: {name}: {scorer.truncated} request(s) lost context tokens to max_len "
                      f"{scorer.max_len}; their scores are on the shortened text", file=sys.stderr, flush=True)
    return out


def load_task(data_dir: str, name: str, num_fewshot: int = 0, tfds_data_dir: Optional[str] = None):
    """(records, few-shot records) of a task, each record checked."""
    train_docs = load_docs(data_dir, name, "train", tfds_data_dir) if num_fewshot else []
    return load_docs(data_dir, name, tfds_data_dir=tfds_data_dir), train_docs


def published_row(config) -> Optional[str]:
    shapes = {(768, 12): "GPT-Neo 125M", (1024, 24): "GPT-Neo 350M", (2048, 24): "GPT-Neo 1.3B",
              (2560, 32): "GPT-Neo 2.7B"}
    return shapes.get((config.hidden_size, config.num_layers))


def paper_table(rows: dict[str, tuple[Optional[str], dict]]) -> dict:
    """{label: (published model or None, results)} -> per column: ours, published, difference."""
    table = {}
    for label, (model, results) in rows.items():
        published = PUBLISHED.get(model, {})
        table[label] = {}
        for column in COLUMNS:
            name, metric = SOURCES.get(column, (None, None))
            ours = results.get(name, {}).get(metric) if name else None
            theirs = published.get(column)
            table[label][column] = {"ours": ours, "published": theirs,
                                    "diff": None if ours is None or theirs is None else ours - theirs}
    return table


def _fmt(column, value):
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if column in PERCENT else f"{value:.4g}"


def format_table(table: dict, markdown: bool = True) -> str:
    header = ["model"] + COLUMNS
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] if markdown else ["\t".join(header)]
    for label, cells in table.items():
        row = [label]
        for column in COLUMNS:
            c = cells[column]
            text = _fmt(column, c["ours"])
            if c["published"] is not None:
                diff = "" if c["diff"] is None else f", {'+' if c['diff'] >= 0 else ''}{_fmt(column, c['diff'])}"
                text += f" ({_fmt(column, c['published'])}{diff})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |" if markdown else "\t".join(row))
    if markdown:
        lines.append("\nour value (published value, difference); '-' = no data here, never invented")
    return "\n".join(lines)


__all__ = ["CODEX", "CODE_COLUMNS", "COLUMNS", "CodeSettings", "PUBLISHED", "Scorer", "evaluate", "format_table",
           "load_task", "paper_table", "perplexity_of_texts", "published_row"]
