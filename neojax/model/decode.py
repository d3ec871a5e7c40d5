"""Incremental decoding with a preallocated KV cache: one prefill pass, then one token a step.

Global layers cache every slot; windowed (local) layers keep a ring buffer of `window` entries.
Slots are cache indices (a left-padded batch shares them); positions are per-row token
positions (cumsum of the mask - 1), so left padding never shifts a row's positions.
"""
from __future__ import annotations

import jax.numpy as jnp

from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo, position_ids_from_mask


def prefill(params, config: GPTNeoConfig, tokens, attention_mask, cache_length: int):
    """Run the prompt ([batch, P], left padded) once. Returns (logits of the last slot [batch, vocab],
    cache sized for `cache_length` slots, position of the last prompt token per row)."""
    positions = position_ids_from_mask(attention_mask)
    logits, cache = GPTNeo(config).apply({"params": params}, tokens, attention_mask=attention_mask,
                                         position_ids=positions, cache_length=cache_length)
    return logits[:, -1], cache, positions[:, -1]


def decode_step(params, config: GPTNeoConfig, cache, token, position, slot):
    """One token per row ([batch]) at cache `slot` and per-row `position`. Returns (logits, cache)."""
    logits, cache = GPTNeo(config).apply({"params": params}, token[:, None], position_ids=position[:, None],
                                         cache=cache, slot=slot)
    return logits[:, 0], cache
