"""Attention kernels and the attention registry that `attention_types` selects from.

A variant is an `AttentionVariant` registered under a name (see its docstring; GPT-Neo's "global"
and "local" are at the bottom of this file, rotary / ALiBi / linear in `variants.py`). Every
registered variant is checked by the same property tests (`neojax.testing`).

GPT-Neo facts kept here: logits are NOT scaled by 1/sqrt(head_dim); logits and softmax are float32
(q.k accumulates in float32, which for bfloat16 q and k equals the reference's upcast-then-multiply
and stays on the matrix units); masked logits take float32's minimum (as the released code does), so a
fully masked row yields a harmless uniform average instead of NaN.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from neojax import registry
from neojax.model import backend
from neojax.model.quant import quantize_kv

MASKED = float(jnp.finfo(jnp.float32).min)


def masked_attention(q, k, v, mask, dropout=lambda p: p, bias=None):
    """Softmax attention over heads-major q, k, v ([..., time, head_dim], leading dims batch-like:
    batch, heads, blocks) with a boolean mask (and optional float32 score bias) broadcastable to
    [..., q_len, k_len]."""
    scores = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        scores = scores + bias
    scores = jnp.where(mask, scores, MASKED)
    probs = dropout(jax.nn.softmax(scores, axis=-1).astype(v.dtype))
    return jnp.einsum("...qk,...kd->...qd", probs, v)


def _heads_major(*xs):
    """[batch, time, heads, d] -> [batch, heads, time, d], once per layer: the blocked kernels then
    slice time without XLA transposing each block's (overlapping) keys again (docs/performance.md)."""
    return [x.transpose(0, 2, 1, 3) for x in xs]


def window_mask(q_len: int, k_len: int, window: int | None, offset: int = 0):
    """[q_len, k_len] bool: key j visible to query i iff i - window < j <= i, with i = row + offset."""
    i = jnp.arange(q_len)[:, None] + offset
    j = jnp.arange(k_len)[None, :]
    visible = j <= i
    if window is not None:
        visible &= j > i - window
    return visible


def segment_ids(key_mask):
    """int32 segment ids from a key mask: a bool padding mask is one segment (1) plus padding (0)."""
    return None if key_mask is None else key_mask.astype(jnp.int32)


def same_segment(q_seg, k_seg):
    """[..., q] and [..., k] segment ids -> [..., q, k]: both in one segment, and not padding."""
    return (q_seg[..., :, None] == k_seg[..., None, :]) & (k_seg[..., None, :] > 0)


def _with_keys(mask, segments, queries: slice, keys: slice):
    """Combine a [q, k] structural mask with [batch, time] segment ids -> [batch, 1, q, k]."""
    if segments is None:
        return mask[None, None]
    return mask[None, None] & same_segment(segments[:, queries], segments[:, keys])[:, None]


def _distances(q_len: int, k_len: int, offset: int = 0):
    """[q_len, k_len] int32: query slot minus key slot, with query row r at slot r + offset."""
    return (jnp.arange(q_len)[:, None] + offset - jnp.arange(k_len)[None, :]).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """One attention mechanism, as the model, the decoder and the property checks use it.

    attend(q, k, v, key_mask, config, dropout, positions) -> out
        The full-sequence forward. q, k, v: [batch, time, heads, head_dim] in the compute dtype;
        key_mask: [batch, time] bool (False = padding), or int segment ids (0 = padding; a query
        sees only keys of its own segment: packed examples), or None; dropout: applied to attention
        probabilities; positions: [batch, time] int token positions (left padding aware). Returns
        [batch, time, heads, head_dim] in q's dtype.
    window(config) -> int | None
        How many keys back a query may see (None: all). Sizes the decoding cache (a ring).
    bias(config, distance) -> [heads, *distance.shape] float32, or None
        A score bias that depends only on query slot minus key slot (>= 0), e.g. ALiBi; used by
        the cached decoding path (`attend` applies it itself).
    qk(q, k, positions, config) -> (q, k), or None
        A position transform of queries and keys (rotary), applied before `attend` and before keys
        enter the decoding cache.
    prefill(k, v, key_mask, capacity, config) -> cache and step(q, k, v, cache, slot, config) -> (out, cache)
        The decoding state. Default: a softmax KV cache (`fill_cache` / `cached_attention`);
        recurrent variants (linear attention) keep a running state instead.
    grow(cache, length, config) -> cache, or None
        The decoding state given room for `length` slots in all. generate decodes in phases whose
        caches hold only the slots each phase reaches; a variant with its own `prefill` and no
        `grow` is decoded in one phase.
    packed: whether `attend` keeps packed segments apart (the model refuses segment ids otherwise).
    """
    attend: Callable
    window: Callable[..., Optional[int]] = lambda config: None
    bias: Optional[Callable] = None
    qk: Optional[Callable] = None
    prefill: Optional[Callable] = None
    step: Optional[Callable] = None
    grow: Optional[Callable] = None
    packed: bool = True

    def capacity(self, length: int, config) -> int:
        """KV-cache entries for `length` slots: all of them, or a ring of `window`."""
        window = self.window(config)
        return length if window is None else min(length, window)

    def start_cache(self, k, v, key_mask, length: int, config):
        """The decoding state after a prompt of k, v, for `length` slots in all."""
        if self.prefill is not None:
            return self.prefill(k, v, key_mask, length, config)
        return fill_cache(k, v, key_mask, self.capacity(length, config), int8=config.kv_cache == "int8")

    @property
    def growable(self) -> bool:
        return self.prefill is None or self.grow is not None

    def grow_cache(self, cache, length: int, config):
        """The decoding state after start_cache(..., shorter length), given room for `length` slots."""
        if self.grow is not None:
            return self.grow(cache, length, config)
        return pad_cache(cache, self.capacity(length, config))

    @property
    def servable(self) -> bool:
        """Whether its decoding state is a softmax KV cache, which `extend` keeps per slot."""
        return self.step is None

    def extend(self, q, k, v, cache, starts, config, rows=None):
        """New tokens of independent rows at their own cache slots (a server's batch): (out, cache)."""
        if not self.servable:
            raise ValueError("this attention variant keeps a running state, not a KV cache per slot; serving needs "
                             "softmax attention variants")
        bias = None if self.bias is None else functools.partial(self.bias, config)
        return extend_attention(q, k, v, cache, starts, self.window(config), bias, rows)

    def decode(self, q, k, v, cache, slot, config):
        """One new token at `slot` against the decoding state: (out, cache)."""
        if self.step is not None:
            return self.step(q, k, v, cache, slot, config)
        bias = None if self.bias is None else functools.partial(self.bias, config)
        return cached_attention(q, k, v, cache, slot, self.window(config), bias)


def _entries(k, v):
    """Heads-major cache entries [batch, heads, time, head_dim] of k, v ([batch, time, heads, head_dim])."""
    return {"k": k.transpose(0, 2, 1, 3), "v": v.transpose(0, 2, 1, 3)}


def _store(entries, like):
    """entries in the form of the cache `like`: its dtype, or int8 + scales if it holds scales."""
    if "k_scale" not in like:
        return {n: x.astype(like[n].dtype) for n, x in entries.items()}
    out = {}
    for n, x in entries.items():
        out[n], out[n + "_scale"] = quantize_kv(x)
    return out


def _slot_axis(name: str) -> int:
    return 1 if name == "valid" else 2  # valid: [batch, slots]; k, v and scales: [batch, heads, slots, ...]


def fill_cache(k, v, key_mask, capacity: int, int8: bool = False):
    """A layer cache holding the k/v of slots 0..T-1 (prefill). Slot s lives at entry s % capacity.

    Caches are heads-major, [batch, heads, capacity, head_dim]: a decode step then reads each
    head's keys contiguously instead of transposing the whole cache every token. An int8 cache
    stores int8 values and a float32 scale per batch row, head and slot."""
    b, t = k.shape[:2]
    cache = _entries(k, v)
    if int8:
        cache = _store(cache, {"k_scale": None})
    cache["valid"] = jnp.ones((b, t), bool) if key_mask is None else key_mask > 0
    if t >= capacity:  # keep the last `capacity` slots, rolled into ring order
        shift = (t - capacity) % capacity
        return {n: jnp.roll(jax.lax.slice_in_dim(x, t - capacity, t, axis=_slot_axis(n)), shift, axis=_slot_axis(n))
                for n, x in cache.items()}
    return pad_cache(cache, capacity)


def pad_cache(cache, capacity: int):
    """A layer cache given `capacity` entries by adding empty ones at the end: right only while no
    entry has been overwritten (a ring at its full capacity is never padded)."""
    pad = capacity - cache["k"].shape[2]
    if pad < 0:
        raise ValueError(f"a cache of {cache['k'].shape[2]} entries cannot shrink to {capacity}")
    if pad == 0:
        return cache
    slots = lambda x, axis: jnp.pad(x, [(0, pad) if a == axis else (0, 0) for a in range(x.ndim)])
    return {n: slots(x, _slot_axis(n)) for n, x in cache.items()}


def _attend_cache(q, cache, visible, bias_scores=None):
    """Softmax attention of q [batch, q, heads, head_dim] over a heads-major cache (int8 or not):
    scales multiply the scores (keys) and the probabilities (values), never a dequantised cache."""
    scores = jnp.einsum("bqhd,bhkd->bhqk", q, cache["k"].astype(q.dtype), preferred_element_type=jnp.float32)
    if "k_scale" in cache:
        scores = scores * cache["k_scale"][:, :, None, :]
    if bias_scores is not None:
        scores = scores + bias_scores
    probs = jax.nn.softmax(jnp.where(visible, scores, MASKED), axis=-1)
    if "v_scale" in cache:
        probs = probs * cache["v_scale"][:, :, None, :]
    return jnp.einsum("bhqk,bhkd->bqhd", probs.astype(q.dtype), cache["v"].astype(q.dtype))


def cached_attention(q, k, v, cache, slot, window: Optional[int], bias=None):
    """One new token (q, k, v of shape [batch, 1, heads, head_dim]) at absolute `slot` against a
    layer cache; returns (out, cache). `bias(distance)` -> [heads, ...] is an optional score bias.

    Entry e of a capacity-C cache holds slot `slot - ((slot - e) mod C)` (negative: never written),
    so the window and causality tests need no stored positions."""
    capacity = cache["k"].shape[2]
    entry = slot % capacity
    new = {**_store(_entries(k, v), cache), "valid": jnp.ones((q.shape[0], 1), bool)}
    cache = {n: jax.lax.dynamic_update_slice_in_dim(cache[n], x, entry, axis=_slot_axis(n)) for n, x in new.items()}
    held = slot - (slot - jnp.arange(capacity)) % capacity
    visible = (held >= 0) & cache["valid"]
    if window is not None:
        visible &= held > slot - window
    bias_scores = None if bias is None else bias((slot - held)[None, :])[None]
    return _attend_cache(q, cache, visible[:, None, None, :], bias_scores).astype(v.dtype), cache


def extend_attention(q, k, v, cache, starts, window: Optional[int], bias=None, rows=None):
    """C new tokens per row (q, k, v: [batch, C, heads, head_dim]) at slots starts[b] .. starts[b]+C-1
    of that row's own cache (neojax.infer.cache.slot_cache; rows are independent requests at their own lengths).
    A query sees the keys at slots up to its own (inside the window): entries past it, padding or a
    previous request's leftovers, never. The cache needs room for starts + C: writes never wrap.
    `rows` ([batch] ints): the cache holds every request and query row p is cache row rows[p] (a
    batch of prompt chunks of some requests); those rows are written in place and only they are
    read. A row given twice must carry the same tokens (padding a batch repeats its first row)."""
    c = q.shape[1]
    capacity = cache["k"].shape[2]
    new = _store(_entries(k, v), cache)
    if rows is None:
        write = jax.vmap(lambda buf, x, s: jax.lax.dynamic_update_slice_in_dim(buf, x, s, axis=1))
        cache = {n: write(cache[n], x, starts) for n, x in new.items()}
        view = cache
    else:  # new[n]: [P, heads, C, ...] into cache rows `rows` at slots starts[p] + 0..C-1
        slots = (starts[:, None] + jnp.arange(c))[:, None, :]
        heads = jnp.arange(q.shape[2])[None, :, None]
        cache = {n: cache[n].at[rows[:, None, None], heads, slots].set(x) for n, x in new.items()}
        view = {n: x[rows] for n, x in cache.items()}
    distance = (starts[:, None, None] + jnp.arange(c)[None, :, None]) - jnp.arange(capacity)[None, None, :]
    visible = distance >= 0
    if window is not None:
        visible &= distance < window
    bias_scores = None if bias is None else bias(jnp.maximum(distance, 0)).transpose(1, 0, 2, 3)
    return _attend_cache(q, view, visible[:, None], bias_scores).astype(v.dtype), cache


def _fused(q, key_mask, config) -> bool:
    """cuDNN's fused (flash) attention serves unpadded bfloat16 attention without dropout on GPUs:
    no [T, T] scores in memory, masked blocks skipped. Same maths (float32 softmax, no scaling).
    cuDNN takes head sizes that are multiples of 8 up to 128; others use the blocked kernels."""
    return (key_mask is None and q.dtype == jnp.bfloat16 and config.attention_dropout == 0
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128 and backend.fused_attention(config))


def _fused_attention(q, k, v, window: Optional[int]):
    local = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True, local_window_size=local,
                                        implementation="cudnn")


def global_attention(q, k, v, key_mask, config, dropout=lambda p: p, positions=None, bias=None):
    """Full causal attention (GPT-Neo's "global" layers). `bias(distance)`: optional score bias.

    Sequences longer than `config.global_block_size` run in query blocks that see only the keys up
    to their own end, skipping the fully masked upper triangle: at T=2048 with blocks of 256 that is
    36/64 of the dense score matrix's work. Every valid row's softmax is unchanged (masked keys
    contribute exactly zero)."""
    if bias is None and _fused(q, key_mask, config):
        return _fused_attention(q, k, v, None)
    t, block = q.shape[1], config.global_block_size
    block = t if not block else min(block, t)
    segments = segment_ids(key_mask)
    q, k, v = _heads_major(q, k, v)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        mask = _with_keys(window_mask(end - start, end, None, offset=start), segments, slice(start, end), slice(0, end))
        score_bias = None if bias is None else bias(_distances(end - start, end, start))
        outs.append(masked_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], mask, dropout, score_bias))
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)


def local_attention(q, k, v, key_mask, config, dropout=lambda p: p, positions=None):
    """Causal sliding-window attention (GPT-Neo's "local" layers): key j visible iff i - W < j <= i.

    Computed in blocks, as the original mesh-tensorflow code did: each query block of `bq`
    positions attends to its own block plus `halo` blocks to its left, so time and memory are
    O(T x (bq + W)) rather than the O(T^2) of a masked dense score matrix."""
    b, t, h, d = q.shape
    window = config.window_size
    if _fused(q, key_mask, config):
        return _fused_attention(q, k, v, window)
    if t <= window:  # every causal key is inside the window: plain causal attention is already O(T x W)
        return global_attention(q, k, v, key_mask, config, dropout)
    bq = min(config.local_block_size, window)
    halo = math.ceil((window - 1) / bq)
    nb = math.ceil(t / bq)
    pad = nb * bq - t
    segments = jnp.ones((b, t), jnp.int32) if key_mask is None else segment_ids(key_mask)

    def blocks(x):  # [..., t, d] -> [..., nb, bq, d]
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])
        return x.reshape(*x.shape[:-2], nb, bq, x.shape[-1])

    def with_halo(x):  # [..., nb, bq, d] -> [..., nb, (halo + 1) * bq, d]: left blocks + own
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(halo, 0), (0, 0), (0, 0)])
        return jnp.concatenate([x[..., i:i + nb, :, :] for i in range(halo + 1)], axis=-2)

    q, k, v = _heads_major(q, k, v)
    qb, kb, vb = blocks(q), with_halo(blocks(k)), with_halo(blocks(v))  # [b, h, nb, bq or keys, d]
    q_seg = blocks(segments[..., None])[..., 0]  # [b, nb, bq]
    k_seg = with_halo(q_seg[..., None])[..., 0]  # [b, nb, keys]; left of 0 is padding
    # Query r of block n sits at n*bq + r, key c at (n - halo)*bq + c: the window test is the same
    # [bq, keys] matrix for every block.
    structure = window_mask(bq, (halo + 1) * bq, window, offset=halo * bq)
    mask = structure & same_segment(q_seg, k_seg)[:, None]  # [b, 1, nb, bq, keys]
    out = masked_attention(qb, kb, vb, mask, dropout)  # [b, h, nb, bq, d]
    return out.reshape(b, h, nb * bq, -1)[:, :, :t].transpose(0, 2, 1, 3)


registry.register("attention", "global")(AttentionVariant(global_attention))
registry.register("attention", "local")(AttentionVariant(local_attention, window=lambda config: config.window_size))
