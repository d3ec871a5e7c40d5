"""Tokenise once into on-disk token shards, pack into fixed windows, iterate exactly resumably.

    cache = build_token_cache(source, args, tokenizer, cache_dir)  # uint16/uint32 shards, local or remote
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
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from neojax import paths
from neojax.data import sources, transforms
from neojax.data.tokenizer import Tokenizer
from neojax.files import write_json

ENCODE_CHUNK = 512  # documents per tokenizer batch call
SHARD_DOCS = 4096  # documents per cache shard: the unit divided among processes and resumed after a kill
CACHE_LAYOUT = 2  # in every cache key: a change of layout builds new caches beside old ones


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
    files = [list(paths.fingerprint(p)) for p in sources.expand_paths(args["paths"])] if "paths" in args else []
    return [source, json.loads(json.dumps(args, sort_keys=True, default=str)), files]


def _is_valid(doc_index: int, seed: int, fraction: float) -> bool:
    """Every k-th document (k = round(1 / fraction)), starting at seed mod k, is held out."""
    if fraction <= 0:
        return False
    k = max(1, round(1 / fraction))
    return doc_index % k == seed % k


def _shard_file(index: int, split: str) -> str:
    return f"shard-{index:05d}.{split}.bin"


def _shard_marker(index: int) -> str:
    return f"shard-{index:05d}.json"


class TokenStream:
    """One token stream over the shards of a split, in order: slicing reads across shard edges."""

    def __init__(self, parts: list, dtype: np.dtype):
        self.parts, self.dtype = [p for p in parts if len(p)], dtype
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # the whole split (tests, small caches)
        return self[:] if dtype is None else self[:].astype(dtype)

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(len(self))
        if start >= stop:
            return np.zeros(0, self.dtype)
        out, i = [], int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            base = int(self.offsets[i])
            end = min(stop, int(self.offsets[i + 1]))
            out.append(np.asarray(self.parts[i][start - base:end - base]))
            start, i = end, i + 1
        return np.concatenate(out) if len(out) != 1 else out[0]


class RemoteTokens:
    """A token file on object storage, read by range: a window is one ranged GET, so no host copies
    the cache whole."""

    def __init__(self, path: str, dtype: np.dtype, length: int):
        self.path, self.dtype, self.length = path, dtype, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(self.length)
        size = self.dtype.itemsize
        return np.frombuffer(paths.read_range(self.path, start * size, stop * size), self.dtype)


def _tokens(path, dtype: np.dtype, length: int):
    if paths.is_remote(path):
        return RemoteTokens(str(path), dtype, length)
    return np.memmap(path, dtype, "r", shape=(length,))


class TokenCache:
    """Train and validation token streams of one source: local shards memory-mapped, remote ones
    read by range."""

    def __init__(self, directory: str):
        root = paths.path(directory)
        self.meta = json.loads((root / "meta.json").read_text())
        self.directory = str(directory)
        dtype = np.dtype(self.meta["dtype"])
        shards = self.meta["shards"]
        self.train = TokenStream([_tokens(root / _shard_file(i, "train"), dtype, n) for i, (n, _) in
                                  enumerate(shards) if n], dtype)
        self.valid = TokenStream([_tokens(root / _shard_file(i, "valid"), dtype, n) for i, (_, n) in
                                  enumerate(shards) if n], dtype)


def build_token_cache(source: str, source_args: dict, tokenizer: Tokenizer, cache_dir: str,
                      valid_fraction: float = 0.01, seed: int = 0, on_error: str = "raise",
                      dtype: Optional[str] = None, progress: bool = True, process_index: int = 0,
                      process_count: int = 1, shard_docs: int = SHARD_DOCS,
                      transform: Optional[tuple] = None) -> TokenCache:
    """Tokenise `source` once into cache_dir/<fingerprint>/ (reused by later runs), local or remote.

    Documents are cut into shards of `shard_docs`; process p of P tokenises shards p, p + P, ...
    (each batch encoded on every core of its host) and publishes each by a marker written last, so
    a killed build resumes shard by shard, and a cache built by any number of processes holds the
    same tokens, split and windows. Process 0 writes meta.json once every shard is there; the
    others wait for it. `transform`: (name, options, mode) of a registered data_transform applied to
    every document (neojax.data.transforms), part of the cache's key."""
    source_args = dict(source_args)
    dt = token_dtype(tokenizer.vocab_size, dtype)
    key = json.dumps([CACHE_LAYOUT, shard_docs, _source_fingerprint(source, source_args),
                      _tokenizer_fingerprint(tokenizer), valid_fraction, seed, str(dt)]
                     + ([transforms.fingerprint(*transform)] if transform else []), sort_keys=True)
    directory = paths.path(cache_dir) / f"{source}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (directory / "meta.json").exists():
        return TokenCache(str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    docs, policy = sources.documents(source, source_args, on_error)
    if transform:
        name, options, mode = transform
        docs = transforms.apply(docs, transforms.build(name, options), mode)
    who = f" (process 0's share of {process_count})" if process_count > 1 else ""
    bar = _progress(progress, f"tokenising {source}{who}")
    n_docs, n_shards = 0, 0
    for index, batch in enumerate(_batched(docs, shard_docs)):
        if index % process_count == process_index and not (directory / _shard_marker(index)).exists():
            _write_shard(directory, index, batch, n_docs, tokenizer, dt, seed, valid_fraction, bar)
        n_docs, n_shards = n_docs + len(batch), index + 1
    bar.close()
    if n_docs == 0:
        raise sources.DataError(f"data source {source!r} with {source_args} produced no documents")
    if process_index != 0:
        paths.wait_for(directory / "meta.json", "process 0 to finish the token cache")
        return TokenCache(str(directory))
    counts = []
    for index in range(n_shards):  # the other processes' shards
        paths.wait_for(directory / _shard_marker(index), f"the process building shard {index}")
        marker = json.loads((directory / _shard_marker(index)).read_text())
        counts.append([marker["train"], marker["valid"]])
    meta = {"source": source, "source_args": source_args, "documents": n_docs,
            "train_tokens": sum(c[0] for c in counts), "valid_tokens": sum(c[1] for c in counts), "dtype": str(dt),
            "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "skipped_records": policy.skipped,
            "shard_docs": shard_docs, "shards": counts}
    write_json(str(directory / "meta.json"), meta)
    return TokenCache(str(directory))


def _batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_shard(directory, index: int, docs: list[str], first_doc: int, tokenizer: Tokenizer, dtype: np.dtype,
                 seed: int, valid_fraction: float, bar) -> None:
    """Tokenise one shard's documents (document first_doc onwards) and publish it, marker last."""
    splits = {"train": [], "valid": []}
    for start in range(0, len(docs), ENCODE_CHUNK):
        for i, ids in enumerate(tokenizer.encode_batch(docs[start:start + ENCODE_CHUNK])):
            arr = np.asarray(ids + [tokenizer.eos_id], dtype)
            splits["valid" if _is_valid(first_doc + start + i, seed, valid_fraction) else "train"].append(arr)
            bar.update(arr.size)
    counts = {}
    for split, arrays in splits.items():
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype)
        paths.write_bytes(directory / _shard_file(index, split), tokens.tobytes())
        counts[split] = int(tokens.size)
    write_json(str(directory / _shard_marker(index)), {**counts, "documents": len(docs)})


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
        import grain  # deferred: evaluate and serve import this module for process_rows, not grain (0.25 s)
        rows = process_rows(global_batch, process_index, process_count)
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
        if process_count > 1:  # this process reads only its rows: the same contiguous rows as one process's
            ds = grain.MapDataset.source(_ProcessRows(ds, global_batch, rows))
        ds = ds.batch(rows.stop - rows.start, batch_fn=np.stack)
        self._iter = iter(ds.to_iter_dataset())

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        return self._iter.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iter.set_state(state)


class _ProcessRows:
    """Row i of one process's share: its process_rows() slice of every global batch, so the devices
    hold the rows they hold in a one-process run (equal sums, bit for bit) and a run resumes on any
    number of processes with the same data."""

    def __init__(self, rows, global_batch: int, share: slice):
        self.rows, self.global_batch = rows, global_batch
        self.per, self.offset = share.stop - share.start, share.start

    def __len__(self) -> int:
        return len(self.rows) // self.global_batch * self.per

    def __getitem__(self, i: int):
        return self.rows[(i // self.per) * self.global_batch + self.offset + i % self.per]


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
