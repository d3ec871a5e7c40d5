"""The weights decode steps multiply by, and the variables every decoding program applies."""
from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp

from neojax.model import backend
from neojax.model.config import GPTNeoConfig


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


_transposed_kernels = jax.jit(transposed_kernels, static_argnums=1)


def decode_weights(params, config: GPTNeoConfig):
    """The weight copies decode steps multiply by, or None: [out, in] (twice as fast on CPUs) and in
    the compute dtype (no per-token conversion of float32 weights; int8 stays int8). One pass over
    every weight: a caller that decodes many times with the same params (a server, a chat session,
    the harness) makes them once and passes them to each `generate(..., weights=)`; nothing keeps
    them for it."""
    if not (backend.xla_cpu_workarounds(config) or config.dtype != "float32"):
        return None
    return _transposed_kernels(params, config.dtype)


def variables(params, weights: Optional[dict] = None) -> dict:
    """What a decoding program applies the model with: the params, and decode_weights' copies
    where they were made (the model's few-row steps then multiply by those)."""
    return {"params": params} if weights is None else {"params": params, "transposed": weights}
