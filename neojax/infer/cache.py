"""The decoding state: KV caches, and what grows, copies and splits them.

Two layouts of the same per-layer entries (heads-major k and v; int8 with a scale per row, head
and slot when config.kv_cache == "int8"; see neojax.model.attention):
- the fixed batch (`generate`): rows share slots (prompts are left padded); a global layer keeps
  every slot, a windowed (local) layer a ring of `window` entries, and a variant with a running
  state (linear attention) that state. Built by programs.prefill, grown by grow_cache.
- slot rows (the engine, speculative rounds): each row is an independent sequence at its own
  length, written by GPTNeo.extend (extend_attention). Built by slot_caches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from neojax import registry
from neojax.model.config import GPTNeoConfig


def can_grow(config: GPTNeoConfig) -> bool:
    """Whether every layer's fixed-batch decoding state can be grown by grow_cache."""
    return all(registry.get("attention", kind).growable for kind in set(config.attention_layers))


def grow_cache(cache, config: GPTNeoConfig, cache_length: int):
    """A fixed-batch cache from prefill(..., shorter length) (and decode steps short of it), given room
    for `cache_length` slots. Each step reads every entry of a global layer's cache, so generate
    grows it in phases instead of allocating the final length up front."""
    return [registry.get("attention", kind).grow_cache(layer, cache_length, config)
            for kind, layer in zip(config.attention_layers, cache)]


def slot_cache(batch: int, heads: int, capacity: int, head_dim: int, dtype, int8: bool = False):
    """An empty slot-row layer cache for extend_attention: [batch, heads, capacity, head_dim] k and v
    (int8 with a float32 scale per row, head and slot if `int8`)."""
    zeros = lambda shape, dt: jnp.zeros(shape, dt)  # distinct buffers: all are donated
    shape = (batch, heads, capacity, head_dim)
    if not int8:
        return {"k": zeros(shape, dtype), "v": zeros(shape, dtype)}
    return {"k": zeros(shape, jnp.int8), "v": zeros(shape, jnp.int8), "k_scale": zeros(shape[:3], jnp.float32),
            "v_scale": zeros(shape[:3], jnp.float32)}


def slot_caches(config: GPTNeoConfig, batch: int, capacity: int) -> list:
    """An empty slot_cache per attention layer of `config` (its compute dtype; int8 if its kv_cache is)."""
    return [slot_cache(batch, config.num_heads, capacity, config.head_dim, jnp.dtype(config.dtype),
                       config.kv_cache == "int8") for _ in config.attention_layers]


def split(cache: list, config: GPTNeoConfig) -> tuple[list, list]:
    """A target's and a draft's slot caches kept as one list (the draft's layers after the target's)
    as (the target's layers, the draft's)."""
    n = len(config.attention_layers)
    return cache[:n], cache[n:]


def copy_block(to, source, to_row, to_start, from_row, from_start):
    """`to` with the run of entries at (from_row, from_start) of `source` written at (to_row,
    to_start), in every layer; the run is as long as the shorter of the two caches' slots (a cache
    row's prompt block into a prefix store of one-block rows, or back)."""
    def layer(dst, src):
        out = {}
        for name, x in dst.items():
            length = min(x.shape[2], src[name].shape[2])
            piece = jax.lax.dynamic_slice(src[name], (from_row, 0, from_start) + (0,) * (x.ndim - 3),
                                          (1, x.shape[1], length) + x.shape[3:])
            out[name] = jax.lax.dynamic_update_slice(x, piece, (to_row, 0, to_start) + (0,) * (x.ndim - 3))
        return out
    return [layer(d, s) for d, s in zip(to, source)]
