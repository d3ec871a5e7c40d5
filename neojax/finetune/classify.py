"""Sequence classification fine-tuning (sentiment and similar): GPT-Neo + a linear head on the
last non-padding token, trained with cross entropy, evaluated with accuracy, macro F1 and a
per-class report.

    python -m neojax.train --config experiments/sentiment.py --workdir /tmp/sentiment \
        --config.model.init_from=/models/gpt-neo-125M \
        --config.classify.train=train.jsonl --config.classify.valid=valid.jsonl

Data: jsonl files of {"text": ..., "label": ...} (labels are strings or integers), or a prepared
TFDS dataset as "tfds:NAME" (classify.train_split / valid_split; never downloaded). The training
loop (`neojax.train.loop`, objective "classify") trains it like any run: sharded, checkpointed,
resumable; the workdir gets report.json and `hf/`, a directory transformers'
GPTNeoForSequenceClassification loads.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from neojax import checkpoint
from neojax.checkpoint.hf import load_hf_classifier, save_hf_classifier
from neojax.data.pipeline import ArrayBatches
from neojax.data.sources import DataError, json_lines, tfds_records
from neojax.data.tokenizer import Tokenizer
from neojax.files import write_json
from neojax.model.classifier import GPTNeoClassifier, init_classifier
from neojax.model.config import preset


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


def start(config, num_labels: int):
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


def classifier_loss(model: GPTNeoClassifier):
    """loss(params, batch, rng) -> (mean cross entropy, {"accuracy"}) for the training loop."""
    def loss(params, batch, rng=None):
        logits = model.apply({"params": params}, batch["tokens"], attention_mask=batch["mask"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return ce, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}
    return loss


@dataclasses.dataclass
class ClassificationData:
    train: ArrayBatches               # {"tokens", "mask", "labels"} rows, resumable
    valid: Optional[tuple]            # (tokens, mask, labels) arrays, or None
    names: list                       # label names, index = class id
    caches: tuple = ()


def build(config):
    """(model config, tokenizer, classifier params, ClassificationData) of a `classify` config."""
    c = config.classify
    train_texts, train_raw = read_examples(c.train, c.text_field, c.label_field, c.train_split,
                                           c.tfds_data_dir or None)
    names = list(c.labels) or sorted({str(r) for r in train_raw}, key=lambda s: (len(s), s))
    model_config, params, tokenizer = start(config, len(names))
    pad_id = tokenizer.eos_id
    seq_len = min(config.data.seq_len, model_config.max_position_embeddings)
    tokens, mask = encode(tokenizer, train_texts, seq_len, pad_id)
    rows = {"tokens": tokens, "mask": mask, "labels": label_ids(train_raw, names)}
    train = ArrayBatches(rows, config.train.global_batch, config.train.seed, jax.process_index(), jax.process_count())
    valid = None
    if c.valid:
        texts, raw = read_examples(c.valid, c.text_field, c.label_field, c.valid_split, c.tfds_data_dir or None)
        valid = (*encode(tokenizer, texts, seq_len, pad_id), label_ids(raw, names))
    return model_config, tokenizer, params, ClassificationData(train, valid, names)


@functools.lru_cache(maxsize=4)
def _predict(model: GPTNeoClassifier):
    return jax.jit(lambda params, tokens, mask: jnp.argmax(model.apply({"params": params}, tokens,
                                                                        attention_mask=mask), -1))


def report(model: GPTNeoClassifier, params, data: ClassificationData, batch: int) -> dict:
    """classification_report of the validation examples (batches padded with copies: one compiled shape)."""
    tokens, mask, labels = data.valid
    preds = []
    for first in range(0, len(tokens), batch):
        t, m = tokens[first:first + batch], mask[first:first + batch]
        fill = batch - len(t)
        if fill:
            t, m = np.concatenate([t, np.repeat(t[:1], fill, 0)]), np.concatenate([m, np.repeat(m[:1], fill, 0)])
        preds.append(np.asarray(_predict(model)(params, t, m))[:batch - fill])
    return classification_report(np.concatenate(preds), labels, data.names)


def export(workdir: str, model: GPTNeoClassifier, params, tokenizer, data: ClassificationData, batch: int) -> None:
    """At the end of a run: report.json (validation accuracy, macro F1, per class) and hf/, a
    directory transformers' GPTNeoForSequenceClassification loads."""
    if data.valid is not None:
        result = report(model, params, data, batch)
        print(format_report(result))
        write_json(os.path.join(workdir, "report.json"), result)
    save_hf_classifier(os.path.join(workdir, "hf"), params, model.config, data.names, tokenizer,
                       pad_token_id=tokenizer.eos_id, overwrite=True)
    print(f"saved {os.path.join(workdir, 'hf')} (transformers GPTNeoForSequenceClassification)")
