"""A moderation gate for the server: a GPT-Neo classifier made by neojax's own classification
fine-tuning (`experiments/moderation.py`, or any GPTNeoForSequenceClassification directory) scores
texts; a text whose flag score (1 - the probability of the safe label) exceeds the threshold is
flagged.

    gate = Moderator.load("/runs/moderation/hf", threshold=0.5)
    gate.score(["a statement"])   # [{"flagged": bool, "flag_score": float, "scores": {label: p}}]

Texts are scored in fixed shapes (batches of BATCH, lengths rounded up to powers of two), so the
gate compiles a few programs and then none.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neojax.checkpoint.hf import load_hf_classifier
from neojax.errors import UsageError
from neojax.infer.buckets import bucket
from neojax.model.classifier import GPTNeoClassifier

BATCH = 8
MIN_LEN = 16


@dataclasses.dataclass
class Moderator:
    model: GPTNeoClassifier
    params: dict
    tokenizer: object
    labels: list[str]
    threshold: float = 0.5
    safe_label: str = ""
    name: str = "moderation"

    def __post_init__(self):
        self.safe_label = self.safe_label or self.labels[0]
        if self.safe_label not in self.labels:
            raise UsageError(f"--moderation_safe_label {self.safe_label!r} is not a label of the classifier; its "
                             f"labels: {self.labels}")
        self.safe = self.labels.index(self.safe_label)
        self.max_len = self.model.config.max_position_embeddings

    @classmethod
    def load(cls, directory: str, threshold: float = 0.5, safe_label: str = "") -> "Moderator":
        _check_classifier(directory)
        config, params, tokenizer, labels = load_hf_classifier(directory)
        if tokenizer is None:
            raise UsageError(f"--moderation {directory} has no tokenizer; export the classifier with its tokenizer "
                             "(the classify objective's hf/ directory has one)")
        if len(labels) < 2:
            raise UsageError(f"--moderation {directory} has {len(labels)} label; a gate needs a safe label and at "
                             "least one other")
        params = jax.tree.map(jnp.asarray, params)
        name = os.path.basename(os.path.normpath(directory))
        return cls(GPTNeoClassifier(config, len(labels)), params, tokenizer, labels, threshold, safe_label, name)

    @property
    def categories(self) -> list[str]:
        """The labels a text can be flagged for: every label but the safe one."""
        return [label for i, label in enumerate(self.labels) if i != self.safe]

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), labels] softmax probabilities; a text longer than the context keeps its last tokens."""
        encoded = [(self.tokenizer.encode(t) or [self.tokenizer.eos_id])[-self.max_len:] for t in texts]
        out = []
        for first in range(0, len(encoded), BATCH):
            chunk = encoded[first:first + BATCH]
            length = bucket(max(len(ids) for ids in chunk), MIN_LEN, self.max_len)
            tokens = np.full((BATCH, length), self.tokenizer.eos_id, np.int32)
            mask = np.zeros((BATCH, length), np.int32)
            for row, ids in enumerate(chunk):  # right padding: the head reads the last real token
                tokens[row, :len(ids)], mask[row, :len(ids)] = ids, 1
            mask[len(chunk):, 0] = 1  # filler rows score one token (ignored)
            out.append(np.asarray(_probabilities(self.model)(self.params, tokens, mask))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def score(self, texts: Sequence[str]) -> list[dict]:
        """Per text: flagged, the flag score (1 - p(safe label)) and every label's probability."""
        results = []
        for p in self.probabilities(texts):
            flag = float(1.0 - p[self.safe])
            results.append({"flagged": flag > self.threshold, "flag_score": flag,
                            "scores": {label: float(p[i]) for i, label in enumerate(self.labels)}})
        return results

    def openai_result(self, result: dict) -> dict:
        """One result of /v1/moderations in OpenAI's shape: categories are the unsafe labels."""
        return {"flagged": result["flagged"],
                "categories": {c: result["scores"][c] > self.threshold for c in self.categories},
                "category_scores": {c: result["scores"][c] for c in self.categories}}


@functools.lru_cache(maxsize=4)
def _probabilities(model: GPTNeoClassifier):
    return jax.jit(lambda params, tokens, mask: jax.nn.softmax(
        model.apply({"params": params}, tokens, attention_mask=mask).astype(jnp.float32), axis=-1))


def parse_scope(text: str) -> tuple[str, ...]:
    """--moderate: "prompts", "outputs" or "prompts,outputs"."""
    scope = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not scope or any(s not in ("prompts", "outputs") for s in scope):
        raise UsageError(f"--moderate {text!r}: give prompts, outputs or prompts,outputs")
    return scope


__all__ = ["Moderator", "parse_scope"]


def _check_classifier(directory: str) -> None:
    """A UsageError when `directory` holds something other than a sequence classifier (a training
    workdir, a language model), saying what it holds and what to give instead."""
    if os.path.isdir(os.path.join(directory, "checkpoints")) or os.path.isfile(os.path.join(directory, ".lock")):
        hf = os.path.join(directory, "hf")
        hint = f" (this run's is {hf})" if os.path.isdir(hf) else ""
        raise UsageError(f"--moderation {directory} is a training workdir; give the classifier it exported, its hf/ "
                         f"folder{hint}")
    try:
        with open(os.path.join(directory, "config.json")) as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # load_hf_classifier names what is missing or damaged
    if architectures and "GPTNeoForSequenceClassification" not in architectures:
        raise UsageError(f"--moderation {directory} holds a {', '.join(map(str, architectures))}, not a classifier; "
                         "give the hf/ folder of a classification fine-tuning (experiments/moderation.py)")
