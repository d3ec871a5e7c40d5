"""Weight-only int8 quantisation and int8 KV-cache entries: symmetric, per output channel.

    qparams = quantize_params(params)           # matmul kernels and the tied wte -> int8 + scales
    logits = GPTNeo(config).apply({"params": qparams}, tokens)   # the same model code

A Dense kernel [in, out] becomes int8 values and a float32 `kernel_scale` [out] next to it (so
that w ~= kernel * kernel_scale); the tied embedding/head `wte` [vocab, embed] gets per-row scales
`wte_scale` [vocab]. Every other parameter (position embeddings, LayerNorms, biases) stays float32.
The model multiplies by the int8 kernel converted inside the product and scales the result, so no
float copy of the weights is kept.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np


def quantize(w, axis: int):
    """(int8 values, float32 scales) with w ~= values * scales, the max |w| over `axis` mapped to 127.
    An all-zero channel gets scale 1 (its values are 0)."""
    amax = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0).astype(jnp.float32)
    values = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return values, jnp.squeeze(scale, axis)


def is_quantized(params) -> bool:
    return "wte_scale" in params


def quantize_params(params):
    """int8 copies of every matmul kernel (per output channel) and of wte (per row), with scales."""
    if is_quantized(params):
        return params
    flat = flax.traverse_util.flatten_dict(params)
    out = {}
    for path, w in flat.items():
        if path[-1] == "kernel":
            out[path], out[path[:-1] + ("kernel_scale",)] = quantize(w, axis=0)
        elif path == ("wte",):
            out[path], out[("wte_scale",)] = quantize(w, axis=1)
        else:
            out[path] = w
    return flax.traverse_util.unflatten_dict(out)


def dequantize_params(params):
    """float32 params from quantize_params' output (for export; the values keep the rounding)."""
    if not is_quantized(params):
        return params
    flat = flax.traverse_util.flatten_dict(params)
    out = {}
    for path, w in flat.items():
        if path[-1] == "kernel" and path[:-1] + ("kernel_scale",) in flat:
            out[path] = w.astype(jnp.float32) * flat[path[:-1] + ("kernel_scale",)][None, :]
        elif path == ("wte",):
            out[path] = w.astype(jnp.float32) * flat[("wte_scale",)][:, None]
        elif path[-1] != "kernel_scale" and path != ("wte_scale",):
            out[path] = w
    return flax.traverse_util.unflatten_dict(out)


def quantized_shapes(shapes):
    """The ShapeDtypeStruct tree of quantize_params(params) given params' shapes (from the config)."""
    return jax.eval_shape(quantize_params, shapes)


def param_bytes(params) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))


def quantize_kv(x):
    """A KV-cache entry [..., head_dim] -> (int8 values, float32 scale per head and position)."""
    return quantize(x, axis=-1)


