"""Evaluation hooks run during training, registered by name (kind "eval").

A hook is `fn(params, *, step, config, model_config, tokenizer, data, workdir, mesh) -> metrics`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from neojax import paths, registry
from neojax.evaluate import bias, evaluate, load_task
from neojax.evaluate.task import EmptySubset, available
from neojax.files import write_json
from neojax.finetune import classify
from neojax.generate import generate
from neojax.model.classifier import GPTNeoClassifier
from neojax.train.setup import load_float
from neojax.train.step import batch_loss


@functools.lru_cache(maxsize=8)
def _summed_nll(model_config):
    def f(params, batch):
        loss, aux = batch_loss(params, model_config, batch)
        return loss * aux["tokens"], aux["tokens"]
    return jax.jit(f)


@registry.register("eval", "valid_loss")
def valid_loss(params, *, model_config, tokenizer, data, config, step, **_):
    """Loss, perplexity and bits per byte on the held-out split (fixed batches), beside the
    unigram baseline. For chat data (dict batches) the loss is over response tokens only."""
    if not data.valid or config.objective == "classify":  # a classifier's validation is `classification`'s
        return {}
    nll = count = 0.0
    n_bytes = 0
    for batch in data.valid:
        s, c = _summed_nll(model_config)(params, jax.tree.map(jnp.asarray, batch))
        nll, count = nll + float(s), count + float(c)
        if not isinstance(batch, dict):
            n_bytes += sum(len(tokenizer.decode(row[1:]).encode("utf-8")) for row in batch)
    loss = nll / count
    out = {"valid/loss": loss, "valid/perplexity": math.exp(loss)}
    line = f"  valid @ {step}: loss {loss:.4f} perplexity {out['valid/perplexity']:.2f}"
    if n_bytes:
        out["valid/bits_per_byte"] = nll / math.log(2) / n_bytes
        line += f" bits/byte {out['valid/bits_per_byte']:.3f}"
    if data.unigram is not None:
        out.update({"valid/unigram_loss": data.unigram, "valid/unigram_perplexity": math.exp(data.unigram)})
        line += f" (unigram baseline: loss {data.unigram:.4f}, perplexity {out['valid/unigram_perplexity']:.1f})"
    if jax.process_index() == 0:
        print(line, flush=True)
    return out


@registry.register("eval", "classification")
def classification(params, *, model_config, data, config, step, **_):
    """Accuracy and macro F1 on the validation examples of a `classify` run."""
    if data.valid is None:  # check_config allows this hook on classify runs only
        return {}
    report = classify.report(GPTNeoClassifier(model_config, len(data.names)), params, data, config.train.global_batch)
    if jax.process_index() == 0:
        print(f"  valid @ {step}: accuracy {report['accuracy']:.4f} macro F1 {report['macro_f1']:.4f}", flush=True)
    return {"valid/accuracy": report["accuracy"], "valid/macro_f1": report["macro_f1"]}


@registry.register("eval", "samples")
def samples(params, *, config, model_config, tokenizer, step, **_):
    """Generations from config.eval.sample_prompts, printed and logged as text."""
    prompts = list(config.eval.sample_prompts)
    if not prompts:
        return {}
    out = generate(params, model_config, prompts, tokenizer, max_new_tokens=config.eval.sample_max_new_tokens,
                   temperature=config.eval.sample_temperature, top_p=config.eval.sample_top_p,
                   seed=step, truncate=True)
    text = "\n".join(f"[{p!r}] -> {t!r}" for p, t in zip(prompts, out.texts))
    if jax.process_index() == 0:
        print(f"  samples @ {step}:\n" + "\n".join("    " + line for line in text.splitlines()), flush=True)
    return {"samples/text": text}


@registry.register("eval", "tasks")
def harness_tasks(params, *, config, model_config, tokenizer, step, **_):
    """The evaluation harness's tasks (neojax.evaluate) on config.eval.tasks files in task_data_dir."""
    e = config.eval
    results = evaluate(params, model_config, tokenizer, list(e.tasks), e.task_data_dir, e.num_fewshot, e.task_limit)
    out = {f"{task}/{k}": v for task, metrics in results.items() for k, v in metrics.items()
           if isinstance(v, float) and v == v and not k.endswith("stderr") and k != "seconds"}  # NaN: undefined
    if jax.process_index() == 0:
        print(f"  tasks @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()), flush=True)
    return out


@registry.register("eval", "bias_report")
def bias_report(params, *, config, model_config, tokenizer, step, workdir, **_):
    """The bias suites (neojax.evaluate.bias) in eval.task_data_dir on these params; at the last step
    also on the run's start (model.init_from), side by side in WORKDIR/bias_report.json, .md and
    .png: what a mitigation (e.g. data.transform=counterfactual) changed. Logs the current values."""
    e = config.eval
    loaded = {}
    for name in bias.report_tasks():
        if available(name, e.task_data_dir):
            try:
                loaded[name] = load_task(e.task_data_dir, name)
            except EmptySubset:  # a category the file has no record of: '-' in the report
                continue
    now = evaluate(params, model_config, tokenizer, list(loaded), e.task_data_dir, limit=e.task_limit, loaded=loaded)
    table = {label: cells["now"] for label, cells in bias.bias_report({"now": now}).items()}
    out = {f"bias/{label}": v for label, v in table.items() if v is not None}
    if step != config.train.total_steps or jax.process_index() != 0:
        return out
    columns = {}
    if config.model.init_from:
        start = load_float(config.model.init_from, "model.init_from", dtype=model_config.dtype)
        columns["before (model.init_from)"] = evaluate(start.params, start.config, tokenizer, list(loaded),
                                                       e.task_data_dir, limit=e.task_limit, loaded=loaded)
    columns[f"after (step {step})"] = now
    report = bias.bias_report(columns)
    directory = paths.path(workdir)
    write_json(str(directory / "bias_report.json"), {"table": report, "results": columns, "step": step})
    (directory / "bias_report.md").write_text(bias.format_bias_report(report) + "\n")
    with paths.local_file(str(directory / "bias_report.png")) as local:
        bias.plot_bias_report(report, local)
    print(f"  bias report @ {step}:\n{bias.format_bias_report(report)}\n  wrote {directory / 'bias_report.json'}, "
          ".md, .png", flush=True)
    return out
