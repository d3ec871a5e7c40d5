"""Sequence classification fine-tuning (sentiment and similar): GPT-Neo + a linear head on the
last non-padding token, trained with cross entropy, evaluated with accuracy, macro F1 and a
per-class report.

    python -m neojax.train --config experiments/sentiment.py --workdir /tmp/sentiment \
        --config.model.init_from=/models/gpt-neo-125M \
        --config.classify.train=train.jsonl --config.classify.valid=valid.jsonl

Data: jsonl files of {"text": ..., "label": ...} (labels are strings or integers), or a prepared
TFDS dataset as "tfds:NAME" (classify.train_split / valid_split; never downloaded). The workdir
gets metrics.jsonl, report.json and `hf/`, a directory transformers'
GPTNeoForSequenceClassification loads.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from neojax import checkpoint
from neojax.checkpoint.hf import load_hf_classifier, save_hf_classifier
from neojax.data.sources import DataError, json_lines, tfds_records
from neojax.data.tokenizer import Tokenizer
from neojax.model.classifier import GPTNeoClassifier, init_classifier
from neojax.model.config import preset
from neojax.train.metrics import MetricsWriter
from neojax.train.optim import make_optimizer


# --- data -----------------------------------------------------------------------------------------
def read_examples(spec: str, text_field: str = "text", label_field: str = "label", split: str = "train",
                  data_dir: str | None = None) -> tuple[list[str], list]:
    """(texts, raw labels) from jsonl files (a path or glob) or "tfds:NAME"."""
    texts, labels = [], []
    if spec.startswith("tfds:"):
        for example in tfds_records(spec[len("tfds:"):], split, data_dir, [text_field, label_field]):
            texts.append(str(example[text_field]))
            labels.append(example[label_field])
        return texts, labels
    for where, record in json_lines(spec):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str) or label_field not in record:
            raise DataError(f"{where}: needs a string {text_field!r} and a {label_field!r} (set classify.text_field / "
                            f"classify.label_field); got {sorted(record) if isinstance(record, dict) else record!r}")
        texts.append(record[text_field])
        labels.append(record[label_field])
    if not texts:
        raise DataError(f"{spec}: no examples")
    return texts, labels


def label_ids(raw, names: list) -> np.ndarray:
    index = {str(n): i for i, n in enumerate(names)}
    unknown = sorted({str(r) for r in raw} - set(index))
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the training labels {names}")
    return np.array([index[str(r)] for r in raw], np.int32)


def encode(tokenizer: Tokenizer, texts, seq_len: int, pad_id: int):
    """Right-padded [n, seq_len] tokens and mask; texts longer than seq_len keep their first tokens."""
    tokens = np.full((len(texts), seq_len), pad_id, np.int32)
    mask = np.zeros((len(texts), seq_len), np.int32)
    for row, ids in enumerate(tokenizer.encode_batch(list(texts))):
        ids = (ids or [tokenizer.eos_id])[:seq_len]
        tokens[row, :len(ids)] = ids
        mask[row, :len(ids)] = 1
    return tokens, mask


# --- metrics --------------------------------------------------------------------------------------
def classification_report(predictions, golds, names) -> dict:
    """Accuracy, macro F1 and per-class precision / recall / F1 / support."""
    predictions, golds = np.asarray(predictions), np.asarray(golds)
    per_class = {}
    for i, name in enumerate(names):
        tp = int(np.sum((predictions == i) & (golds == i)))
        predicted, actual = int(np.sum(predictions == i)), int(np.sum(golds == i))
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[str(name)] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return {"accuracy": float(np.mean(predictions == golds)) if len(golds) else 0.0,
            "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])), "n": int(len(golds)),
            "per_class": per_class}


def format_report(report: dict) -> str:
    lines = [f"{'class':<16} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, c in report["per_class"].items():
        lines.append(f"{name:<16} {c['precision']:>9.3f} {c['recall']:>7.3f} {c['f1']:>7.3f} {c['support']:>8}")
    lines.append(f"accuracy {report['accuracy']:.4f}  macro F1 {report['macro_f1']:.4f}  ({report['n']} examples)")
    return "\n".join(lines)


# --- model ----------------------------------------------------------------------------------------
def _is_classifier(path: str) -> bool:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return "GPTNeoForSequenceClassification" in (json.load(f).get("architectures") or [])
    except (OSError, ValueError):
        return False


def _start(config, num_labels: int):
    """(GPT-Neo config, classifier params, tokenizer): a classifier checkpoint as it is, a language
    model with a fresh head, or a random preset."""
    m = config.model
    execution = dict(dtype=m.dtype, remat=m.remat, **dict(m.overrides))
    rng = jax.random.key(config.train.seed)
    if m.init_from and _is_classifier(m.init_from):
        model_config, params, tokenizer, _ = load_hf_classifier(m.init_from, **execution)
        if params["score"]["kernel"].shape[1] != num_labels:
            raise ValueError(f"{m.init_from} classifies into {params['score']['kernel'].shape[1]} labels, "
                             f"the data has {num_labels}")
    elif m.init_from:
        model_config, lm_params, tokenizer = checkpoint.load(m.init_from, **execution)
        params = init_classifier(model_config, num_labels, rng, transformer_params=lm_params)
    else:
        model_config, tokenizer = preset(m.preset, **execution), None
        params = init_classifier(model_config, num_labels, rng)
    if config.data.tokenizer:
        tokenizer = Tokenizer.from_path(config.data.tokenizer)
    if tokenizer is None:
        raise ValueError("no tokenizer: start from a checkpoint that has one (model.init_from) or set data.tokenizer")
    return model_config, params, tokenizer


def make_step(model, optimizer):
    def loss_fn(params, tokens, mask, labels):
        logits = model.apply({"params": params}, tokens, attention_mask=mask)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    @jax.jit
    def predict(params, tokens, mask):
        return jnp.argmax(model.apply({"params": params}, tokens, attention_mask=mask), -1)

    def step(params, opt_state, tokens, mask, labels):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, tokens, mask, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "accuracy": acc}
    return jax.jit(step, donate_argnums=(0, 1)), predict


def evaluate(predict, params, tokens, mask, labels, names, batch: int) -> dict:
    preds = []
    for start in range(0, len(tokens), batch):
        rows = slice(start, start + batch)
        t, m = tokens[rows], mask[rows]
        if len(t) < batch:  # pad the last batch with copies: one compiled shape
            fill = batch - len(t)
            t, m = np.concatenate([t, np.repeat(t[:1], fill, 0)]), np.concatenate([m, np.repeat(m[:1], fill, 0)])
        preds.append(np.asarray(predict(params, t, m))[:len(tokens[rows])])
    return classification_report(np.concatenate(preds), labels, names)


# --- the loop -------------------------------------------------------------------------------------
def train(config, workdir: str) -> dict:
    from neojax.train.workdir import Workdir  # train imports finetune: deferred to keep dependencies one way
    with Workdir.open(config, workdir) as wd:
        return _train(config, wd)


def _train(config, wd) -> dict:
    workdir = wd.path
    c = config.classify
    train_texts, train_raw = read_examples(c.train, c.text_field, c.label_field, c.train_split, c.tfds_data_dir or None)
    names = list(c.labels) or sorted({str(r) for r in train_raw}, key=lambda s: (len(s), s))
    model_config, params, tokenizer = _start(config, len(names))
    pad_id = tokenizer.eos_id
    seq_len = min(config.data.seq_len, model_config.max_position_embeddings)
    tokens, mask = encode(tokenizer, train_texts, seq_len, pad_id)
    labels = label_ids(train_raw, names)
    valid = None
    if c.valid:
        valid_texts, valid_raw = read_examples(c.valid, c.text_field, c.label_field, c.valid_split,
                                               c.tfds_data_dir or None)
        valid = (*encode(tokenizer, valid_texts, seq_len, pad_id), label_ids(valid_raw, names))
    wd.write_config()

    total, batch = config.train.total_steps, config.train.global_batch
    optimizer, _ = make_optimizer(config.optimizer, total)
    opt_state = optimizer.init(params)
    model = GPTNeoClassifier(model_config, len(names))
    step, predict = make_step(model, optimizer)
    writer = MetricsWriter(workdir)
    rng = np.random.default_rng(config.train.seed)
    order, cursor = rng.permutation(len(tokens)), 0
    print(f"classifier: {len(tokens)} training examples, labels {names}, seq_len {seq_len}, {total} steps", flush=True)
    start = time.perf_counter()
    report = {}
    for i in range(1, total + 1):
        if cursor + batch > len(order):  # a new epoch
            order, cursor = rng.permutation(len(tokens)), 0
        rows = order[cursor:cursor + batch] if batch <= len(order) else rng.choice(len(tokens), batch)
        cursor += batch
        params, opt_state, metrics = step(params, opt_state, tokens[rows], mask[rows], labels[rows])
        if i % config.train.log_every == 0 or i == total:
            metrics = {k: float(v) for k, v in metrics.items()}
            elapsed = time.perf_counter() - start
            eta = elapsed / i * (total - i)
            print(f"step {i}/{total} loss {metrics['loss']:.4f} batch accuracy {metrics['accuracy']:.3f} "
                  f"{i * batch / elapsed:,.1f} examples/s eta {time.strftime('%H:%M:%S', time.gmtime(eta))}",
                  flush=True)
            writer.write(i, {f"train/{k}": v for k, v in metrics.items()})
        if valid is not None and (i % config.eval.every_steps == 0 or i == total):
            report = evaluate(predict, params, *valid, names, batch)
            print(f"  valid @ {i}: accuracy {report['accuracy']:.4f} macro F1 {report['macro_f1']:.4f}", flush=True)
            writer.write(i, {"valid/accuracy": report["accuracy"], "valid/macro_f1": report["macro_f1"]})
    writer.close()
    if report:
        print(format_report(report))
        with open(os.path.join(workdir, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
    save_hf_classifier(os.path.join(workdir, "hf"), jax.device_get(params), model_config, names, tokenizer,
                       pad_token_id=pad_id, overwrite=True)
    print(f"saved {os.path.join(workdir, 'hf')} (transformers GPTNeoForSequenceClassification)")
    return {"step": total, "wall_time_s": time.perf_counter() - start, **report}
