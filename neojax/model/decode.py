"""Incremental decoding with a preallocated KV cache: one prefill pass, then one token a step.

Global layers cache every slot; windowed (local) layers keep a ring buffer of `window` entries.
Slots are cache indices (a left-padded batch shares them); positions are per-row token
positions (cumsum of the mask - 1), so left padding never shifts a row's positions.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from neojax import registry
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo
from neojax.model.layers import position_ids_from_mask


def prefill(params, config: GPTNeoConfig, tokens, attention_mask, cache_length: int):
    """Run the prompt ([batch, P], left padded) once. Returns (logits of the last slot [batch, vocab],
    cache sized for `cache_length` slots, position of the last prompt token per row)."""
    logits, cache = GPTNeo(config).apply({"params": params}, tokens, attention_mask, cache_length,
                                         method=GPTNeo.prefill)
    return logits, cache, position_ids_from_mask(attention_mask)[:, -1]


def can_grow(config: GPTNeoConfig) -> bool:
    """Whether every layer's decoding state can be grown by grow_cache."""
    return all(registry.get("attention", kind).growable for kind in set(config.attention_layers))


def grow_cache(cache, config: GPTNeoConfig, cache_length: int):
    """A cache from prefill(..., shorter length) (and decode steps short of it), given room for
    `cache_length` slots. Each step reads every entry of a global layer's cache, so generate grows
    it in phases instead of allocating the final length up front."""
    return [registry.get("attention", kind).grow_cache(layer, cache_length, config)
            for kind, layer in zip(config.attention_layers, cache)]


def transposed_kernels(params, dtype="float32"):
    """Copies of the dense kernels for decode steps, made once per generation in their own program:
    [out, in] (q, k and v stacked into one "qkv"), the faster layout for XLA:CPU's few-row matmuls
    (backend.rows_times), and in the compute `dtype`, so that a step does not convert float32
    weights every token (figures in docs/performance.md). The tied head's wte is already [out, in];
    it is copied only into another dtype."""
    flat = flax.traverse_util.flatten_dict(params)
    out = {("wte",): flat[("wte",)]} if jnp.dtype(dtype) != jnp.float32 else {}
    for path, w in flat.items():
        if path[-1] == "kernel" and path[-2] not in ("q_proj", "k_proj", "v_proj"):
            out[path] = jnp.swapaxes(w, 0, 1)
        elif path[-2:] == ("q_proj", "kernel"):
            out[path[:-2] + ("qkv",)] = jnp.concatenate(
                [jnp.swapaxes(flat[path[:-2] + (f"{n}_proj", "kernel")], 0, 1) for n in "qkv"])
            if path[:-1] + ("kernel_scale",) in flat:  # int8 kernels: their scales, stacked the same way
                out[path[:-2] + ("qkv_scale",)] = jnp.concatenate(
                    [flat[path[:-2] + (f"{n}_proj", "kernel_scale")] for n in "qkv"])
    keep = lambda v: v if v.dtype == jnp.int8 or v.ndim == 1 else v.astype(dtype)  # int8 stays int8
    return flax.traverse_util.unflatten_dict({k: keep(v) for k, v in out.items()})


def decode_step(params, config: GPTNeoConfig, cache, token, position, slot, transposed=None):
    """One token per row ([batch]) at cache `slot` and per-row `position`. Returns (logits, cache).
    `transposed`: transposed_kernels(params, config.dtype), optional (the same maths, faster)."""
    variables = {"params": params} if transposed is None else {"params": params, "transposed": transposed}
    return GPTNeo(config).apply(variables, token[:, None], position[:, None], cache, slot, method=GPTNeo.decode)


def cached_logprobs(params, config: GPTNeoConfig, tokens):
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for t = 0..T-2 ([batch, T-1]), computed the way
    generation computes it: the first token prefilled, every later one a decode step through the
    KV cache (so an int8 cache or another variant's decoding state is what is measured)."""
    tokens = jnp.asarray(tokens)
    b, t = tokens.shape
    mask = jnp.ones((b, 1), jnp.int32)
    logits, cache, position = prefill(params, config, tokens[:, :1], mask, t)

    def step(carry, i):
        logits, cache, position = carry
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        target = jax.lax.dynamic_index_in_dim(tokens, i + 1, axis=1, keepdims=False)
        scored = jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
        logits, cache = decode_step(params, config, cache, target, position + 1, i + 1)
        return (logits, cache, position + 1), scored

    _, scored = jax.lax.scan(step, (logits, cache, position), jnp.arange(t - 1))
    return scored.T
