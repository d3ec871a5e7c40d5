"""Build the model, tokenizer and data of an experiment config (shared by train and hooks)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Optional

import jax
import numpy as np

from neojax import checkpoint, paths, registry
from neojax.data import pipeline, sources
from neojax.data.tokenizer import Tokenizer, train_sentencepiece
from neojax.errors import UsageError
from neojax.finetune import chat as _chat  # noqa: F401  (registers the chat batch source)
from neojax.model import backend
from neojax.model.config import ARCHITECTURE, GPTNeoConfig, preset
from neojax.model.quant import dequantize_params, is_quantized
from neojax.train.schema import ConfigError

log = logging.getLogger("neojax.train")


def _tokenizer(config, workdir: str, fallback: Optional[Tokenizer]) -> Tokenizer:
    d = config.data
    if d.tokenizer:
        return Tokenizer.from_path(d.tokenizer)
    if d.train_sentencepiece:
        folder = paths.path(workdir) / "tokenizer"
        legacy = folder / f"sp{d.train_sentencepiece}.model"  # before keys held the data
        key = json.dumps([d.source, d.source_args.to_dict(), [dict(m) for m in d.mixture]], sort_keys=True, default=str)
        path = folder / f"sp{d.train_sentencepiece}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.model"
        for existing in (path, legacy):
            if existing.exists():
                return Tokenizer.from_path(str(existing))
        if jax.process_index() != 0:  # one tokenizer for every host: process 0 trains it
            paths.wait_for(path, "process 0 to train the tokenizer")
            return Tokenizer.from_path(str(path))
        print(f"training a {d.train_sentencepiece}-piece sentencepiece model on {d.source} -> {path}", flush=True)
        text = list(_training_text(config))  # read first: data errors keep their own message
        if not any(t.strip() for t in text):
            raise ValueError(f"data.source={d.source!r} ({dict(d.source_args)}) yielded no text to train the "
                             "sentencepiece tokenizer on; check data.source_args")
        with paths.staged_dir(str(folder)) as local:
            tokenizer = train_sentencepiece(text, d.train_sentencepiece, os.path.join(local, path.name))
        tokenizer.source = str(path)
        return tokenizer
    if fallback is not None:
        return fallback
    raise ValueError("no tokenizer: set data.tokenizer (a tokenizer.json / vocab.json+merges.txt dir / .model), "
                     "data.train_sentencepiece=VOCAB, or start from a checkpoint that has one (model.init_from)")


def _training_text(config, max_chars: int = 4_000_000, piece: int = 2000):
    """Text for sentencepiece: chunks of the first documents (newlines kept inside chunks)."""
    total = 0
    for source, args, _ in _components(config):
        docs, _ = sources.documents(source, args, config.data.on_error)
        for doc in docs:
            for i in range(0, len(doc), piece):
                yield doc[i:i + piece]
                total += piece
                if total >= max_chars:
                    return


def build_model(config, workdir: str):
    """(GPTNeoConfig, tokenizer, initial params or None for random init)."""
    m = config.model
    execution = {"dtype": m.dtype, "remat": m.remat, **dict(m.overrides)}
    if m.remat != "none" and backend.xla_cpu_workarounds(preset("tiny", **execution)):
        log.warning("model.remat=%s does not lower memory on CPUs: XLA:CPU drops the barriers that keep the "
                    "recomputation apart and merges it back into the forward pass (it works on GPUs and TPUs)", m.remat)
    if m.init_from:
        fixed = {k: v for k, v in execution.items() if k in ARCHITECTURE}
        loaded = load_float(m.init_from, "model.init_from", **{k: v for k, v in execution.items() if k not in fixed})
        clashes = [f"model.overrides.{k}={v!r} (the checkpoint has {getattr(loaded.config, k)!r})"
                   for k, v in fixed.items() if json.dumps(v) != json.dumps(getattr(loaded.config, k))]
        if clashes:
            raise UsageError(f"model.init_from {m.init_from} fixes the architecture, and "
                             f"{'; '.join(clashes)} differ{'s' if len(clashes) == 1 else ''}: drop the overrides "
                             "(model.overrides={}) or start from another checkpoint")
        tokenizer = _tokenizer(config, workdir, loaded.tokenizer)
        if tokenizer.vocab_size > loaded.config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but {m.init_from} only "
                             f"{loaded.config.vocab_size}")
        return loaded.config, tokenizer, loaded.params
    tokenizer = _tokenizer(config, workdir, None)
    model_config = preset(m.preset, **execution)
    if tokenizer.vocab_size != model_config.vocab_size:
        model_config = model_config.replace(vocab_size=tokenizer.vocab_size)
    model_config = model_config.replace(eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.eos_id)
    return model_config, tokenizer, None


def load_float(path: str, key: str, **overrides) -> checkpoint.Pretrained:
    """A checkpoint to train from or distil from: neojax's int8 exports are dequantised (said)."""
    model = checkpoint.load(path, **overrides)
    if is_quantized(model.params):
        print(f"{key} {path}: int8 weights, dequantised to float32 to train from", flush=True)
        model = model._replace(params=jax.device_get(dequantize_params(model.params)))
    return model


def _components(config):
    d = config.data
    if d.source == "mixture":
        if not d.mixture:
            raise ValueError("data.source='mixture' needs data.mixture=[{source, source_args, weight}, ...]")
        return [(c["source"], dict(c.get("source_args", {})), float(c.get("weight", 1.0))) for c in d.mixture]
    return [(d.source, dict(d.source_args), 1.0)]


@dataclasses.dataclass
class Data:
    train: pipeline.TrainBatches
    valid: list
    caches: list

    @functools.cached_property
    def unigram(self) -> Optional[float]:
        """Cross entropy (nats/token) of the best context-free model: training-split token
        frequencies (add-one smoothed) scored on the validation targets; None without token caches
        (chat batches) or validation batches. A trained LM must go far below it."""
        if not (self.caches and self.valid):
            return None
        vocab = max(int(c.meta["vocab_size"]) for c in self.caches)
        counts = sum(np.bincount(np.asarray(c.train), minlength=vocab) for c in self.caches) + 1.0
        logp = np.log(counts / counts.sum())
        targets = np.concatenate([b[:, 1:].ravel() for b in self.valid])
        return float(-logp[targets].mean())


def build_data(config, tokenizer: Tokenizer, workdir: str, model_config: GPTNeoConfig) -> Data:
    d, t = config.data, config.train
    if d.seq_len > model_config.max_position_embeddings:  # before any token is cached
        raise ConfigError([("data.seq_len", d.seq_len, f"exceeds the model's {model_config.max_position_embeddings}-"
                            f"token context; use {model_config.max_position_embeddings} or less")])
    if d.source in registry.names("batch_source"):  # already batches, e.g. chat (neojax.finetune.chat)
        return Data(*registry.get("batch_source", d.source)(config, tokenizer, model_config), caches=[])
    cache_dir = d.cache_dir or str(paths.path(workdir) / "data_cache")
    components = _components(config)
    transform = (d.transform, dict(d.transform_args), d.transform_mode) if d.transform else None
    caches = [pipeline.build_token_cache(source, args, tokenizer, cache_dir, d.valid_fraction, d.seed, d.on_error,
                                         progress=jax.process_index() == 0, process_index=jax.process_index(),
                                         process_count=jax.process_count(), transform=transform)
              for source, args, _ in components]
    for cache in caches:
        if cache.meta["vocab_size"] > model_config.vocab_size:
            raise ValueError(f"token cache {cache.directory} uses {cache.meta['vocab_size']} tokens but the model has "
                             f"{model_config.vocab_size}")
    train = pipeline.TrainBatches(caches, d.seq_len, t.global_batch, d.seed,
                                  weights=[w for _, _, w in components] if len(components) > 1 else None,
                                  process_index=jax.process_index(), process_count=jax.process_count())
    valid = pipeline.valid_batches(caches, d.seq_len, min(t.global_batch, 8), config.eval.valid_batches) \
        if d.valid_fraction > 0 else []
    return Data(train=train, valid=valid, caches=caches)
