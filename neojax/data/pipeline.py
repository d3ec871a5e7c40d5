"""Tokenise once into on-disk token shards, pack into fixed windows, iterate exactly resumably.

    cache = build_token_cache(data_cfg, tokenizer, cache_dir)     # memory-mapped uint16/uint32
    batches = TrainBatches(cache, seq_len, global_batch, seed)    # np.int32 [local_batch, seq_len + 1]
    state = batches.get_state(); ...; batches.set_state(state)     # saved with every checkpoint

Documents are separated by <|endoftext|> (the tokenizer's EOS) and the stream is cut into
non-overlapping windows of seq_len + 1 tokens: no padding, no token lost or repeated in an epoch.
Every k-th document (k = 1 / valid_fraction) is held out for validation, so the two splits never
share a document. Windows are shuffled with a new permutation each epoch (grain).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import grain
import numpy as np
from tqdm import tqdm

from neojax.data import sources
from neojax.data.tokenizer import Tokenizer
from neojax.files import atomic_directory, write_json

ENCODE_CHUNK = 512  # documents per tokenizer batch call


def token_dtype(vocab_size: int, requested: Optional[str] = None) -> np.dtype:
    dtype = np.dtype(requested or ("uint16" if vocab_size <= 1 << 16 else "uint32"))
    if dtype not in (np.uint16, np.uint32):
        raise ValueError(f"token dtype {dtype} : choose uint16 or uint32")
    if vocab_size > np.iinfo(dtype).max + 1:
        raise ValueError(f"vocabulary of {vocab_size} tokens does not fit {dtype}; use uint32")
    return dtype


def _tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    backend = tokenizer.backend
    blob = backend.to_str().encode() if tokenizer.kind == "bpe" else backend.serialized_model_proto()
    return hashlib.sha256(blob).hexdigest()[:16]


def _source_fingerprint(source: str, args: dict) -> list:
    """Source options plus size and mtime of every input file: edited data means a new cache."""
    files = []
    if "paths" in args:
        files = [(p, os.path.getsize(p), int(os.path.getmtime(p))) for p in sources.expand_paths(args["paths"])]
    return [source, json.loads(json.dumps(args, sort_keys=True, default=str)), files]


def _is_valid(doc_index: int, seed: int, fraction: float) -> bool:
    """Every k-th document (k = round(1 / fraction)), starting at seed mod k, is held out."""
    if fraction <= 0:
        return False
    k = max(1, round(1 / fraction))
    return doc_index % k == seed % k


class TokenCache:
    """Train and validation token streams of one source, memory-mapped from disk."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, "meta.json")) as f:
            self.meta = json.load(f)
        dtype = np.dtype(self.meta["dtype"])
        self.directory = directory
        self.train = np.memmap(os.path.join(directory, "train.bin"), dtype, "r") if self.meta["train_tokens"] else \
            np.zeros(0, dtype)
        self.valid = np.memmap(os.path.join(directory, "valid.bin"), dtype, "r") if self.meta["valid_tokens"] else \
            np.zeros(0, dtype)


def build_token_cache(source: str, source_args: dict, tokenizer: Tokenizer, cache_dir: str,
                      valid_fraction: float = 0.01, seed: int = 0, on_error: str = "raise",
                      dtype: Optional[str] = None, progress: bool = True) -> TokenCache:
    """Tokenise `source` once into cache_dir/<fingerprint>/ (reused by later runs)."""
    source_args = dict(source_args)
    dt = token_dtype(tokenizer.vocab_size, dtype)
    key = json.dumps([_source_fingerprint(source, source_args), _tokenizer_fingerprint(tokenizer),
                      valid_fraction, seed, str(dt)], sort_keys=True)
    directory = os.path.join(cache_dir, f"{source}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")
    if os.path.exists(os.path.join(directory, "meta.json")):
        return TokenCache(directory)
    with atomic_directory(directory, overwrite=True) as tmp:  # a killed run never leaves half a cache
        docs, policy = sources.documents(source, source_args, on_error)
        counts = {"train": 0, "valid": 0}
        n_docs = 0
        bar = _progress(progress, f"tokenising {source}")
        with open(os.path.join(tmp, "train.bin"), "wb") as train, open(os.path.join(tmp, "valid.bin"), "wb") as valid:
            chunk: list[str] = []

            def flush():
                nonlocal n_docs
                for ids in tokenizer.encode_batch(chunk):
                    split = "valid" if _is_valid(n_docs, seed, valid_fraction) else "train"
                    arr = np.asarray(ids + [tokenizer.eos_id], dt)
                    arr.tofile(valid if split == "valid" else train)
                    counts[split] += arr.size
                    n_docs += 1
                    bar.update(arr.size)
                chunk.clear()

            for doc in docs:
                chunk.append(doc)
                if len(chunk) == ENCODE_CHUNK:
                    flush()
            flush()
        bar.close()
        if n_docs == 0:
            raise sources.DataError(f"data source {source!r} with {source_args} produced no documents")
        meta = {"source": source, "source_args": source_args, "documents": n_docs, "train_tokens": counts["train"],
                "valid_tokens": counts["valid"], "dtype": str(dt), "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id, "skipped_records": policy.skipped}
        write_json(os.path.join(tmp, "meta.json"), meta)
    return TokenCache(directory)


def _progress(enabled: bool, desc: str):
    return tqdm(desc=desc, unit=" tok", unit_scale=True, disable=not enabled, mininterval=1.0)


class Windows:
    """Random access to non-overlapping windows of `length` tokens of a token stream."""

    def __init__(self, tokens: np.ndarray, length: int):
        self.tokens, self.length = tokens, length

    def __len__(self):
        return len(self.tokens) // self.length

    def __getitem__(self, i):
        start = int(i) * self.length
        return np.asarray(self.tokens[start:start + self.length], np.int32)


class TrainBatches:
    """Shuffled [local_batch, seq_len + 1] int32 batches of one or more token caches (mixed by
    weight), this process's rows only. get_state()/set_state() resume exactly."""

    def __init__(self, caches: list[TokenCache], seq_len: int, global_batch: int, seed: int,
                 weights: Optional[list[float]] = None, process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        datasets = []
        self.windows_per_epoch = 0
        for i, cache in enumerate(caches):
            windows = Windows(cache.train, seq_len + 1)
            self.windows_per_epoch += len(windows)
            if len(windows) == 0:
                raise ValueError(f"{cache.directory} has {len(cache.train)} training tokens, fewer than one window of "
                                 f"{seq_len + 1}; use more data or a shorter seq_len")
            # ~2^50 windows: endless in practice, yet a length grain can index (repeat(None) overflows)
            epochs = max(1, (1 << 50) // len(windows))
            datasets.append(grain.MapDataset.source(windows).shuffle(seed=seed + i).repeat(epochs))
        ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights=weights)
        if process_count > 1:  # this process reads only its rows
            ds = ds[process_index::process_count]
        ds = ds.batch(global_batch // process_count, batch_fn=np.stack)
        self._iter = iter(ds.to_iter_dataset())

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        return self._iter.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iter.set_state(state)


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that one process loads: the process_index-th contiguous share."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


class ArrayBatches:
    """Shuffled epochs over the rows of equally long arrays (packed chat rows, labelled examples),
    resumable (get_state / set_state), each process taking its rows of every global batch."""

    def __init__(self, packed: dict[str, np.ndarray], global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self.packed, self.batch, self.seed = packed, global_batch, seed
        self.rows = process_rows(global_batch, process_index, process_count)
        self.epoch, self.cursor = 0, 0

    def _order(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(next(iter(self.packed.values()))))

    def __next__(self) -> dict[str, np.ndarray]:
        n = len(next(iter(self.packed.values())))
        picks = []
        while len(picks) < self.batch:  # rows wrap into the next epoch
            order = self._order()
            take = order[self.cursor:self.cursor + self.batch - len(picks)]
            picks += take.tolist()
            self.cursor += len(take)
            if self.cursor >= n:
                self.epoch, self.cursor = self.epoch + 1, 0
        picks = np.asarray(picks)[self.rows]
        return {k: v[picks] for k, v in self.packed.items()}

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def valid_batches(caches: list[TokenCache], seq_len: int, batch: int, max_batches: int = 0) -> list[np.ndarray]:
    """Fixed validation batches (in order, no shuffling): the same numbers every evaluation."""
    windows = []
    for cache in caches:
        ws = Windows(cache.valid, seq_len + 1)
        windows += [ws[i] for i in range(len(ws))]
    if not windows:
        raise ValueError("the validation split holds no full window: raise data.valid_fraction or lower seq_len")
    out = [np.stack(windows[i:i + batch]) for i in range(0, len(windows) - batch + 1, batch)] or [np.stack(windows)]
    return out[:max_batches] if max_batches else out
