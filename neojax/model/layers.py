"""The pieces the model is built from: a Dense layer that also runs decode-time and int8 forms
of its kernel, LayerNorm, and the model's input checks and position ids.

A Dense multiplies by its "params" kernel, or by a "transposed" copy of it ([out, in] in the
compute dtype, the faster layout for XLA:CPU's few-row decode products, see
neojax.model.decode.transposed_kernels); an int8 kernel has a `kernel_scale` param next to it
(neojax.model.quant) that multiplies the product. The model's code is the same for all.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neojax.model import backend
from neojax.model.config import GPTNeoConfig


def init(std, axes):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class Dense(nn.Dense):
    @nn.compact
    def __call__(self, x):
        int8 = self.has_variable("params", "kernel_scale")
        if not int8 and not self.has_variable("transposed", "kernel"):
            return super().__call__(x)
        if self.has_variable("transposed", "kernel"):
            y = backend.rows_times(self.get_variable("transposed", "kernel").astype(self.dtype), x.astype(self.dtype))
        else:
            kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
            y = jnp.einsum("...k,kn->...n", x.astype(self.dtype), kernel.astype(self.dtype),
                           preferred_element_type=jnp.float32)
        if int8:
            y = y * self.get_variable("params", "kernel_scale")
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return y.astype(self.dtype)


def dense(config: GPTNeoConfig, features, axes, name, use_bias=True, std=None):
    return Dense(
        features, use_bias=use_bias, name=name, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
        kernel_init=init(config.initializer_range if std is None else std, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def qkv(module: nn.Module, config: GPTNeoConfig, x):
    """The query, key and value projections (no bias) of x: three Dense layers, or while decoding on
    a CPU one product with their stacked transposed kernels."""
    if module.has_variable("transposed", "qkv"):
        y = backend.rows_times(module.get_variable("transposed", "qkv").astype(x.dtype), x)
        if module.has_variable("transposed", "qkv_scale"):  # int8 kernels
            y = (y * module.get_variable("transposed", "qkv_scale")).astype(x.dtype)
        return jnp.split(y, 3, -1)
    return [dense(config, config.hidden_size, ("embed", "heads"), f"{n}_proj", use_bias=False)(x) for n in "qkv"]


def layer_norm(config: GPTNeoConfig, name=None):
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
        use_fast_variance=False, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def position_ids_from_segments(segment_ids):
    """Positions restarting at 0 where each packed segment begins."""
    t = segment_ids.shape[-1]
    starts = jnp.concatenate([jnp.ones_like(segment_ids[..., :1], bool),
                              segment_ids[..., 1:] != segment_ids[..., :-1]], -1)
    first = jax.lax.cummax(jnp.where(starts, jnp.arange(t), 0), axis=segment_ids.ndim - 1)
    return (jnp.arange(t) - first).astype(jnp.int32)


def position_ids_from_mask(attention_mask):
    """Positions with left padding: cumsum(mask) - 1; pads get the harmless position 1."""
    positions = jnp.cumsum(attention_mask, axis=-1) - 1
    return jnp.where(attention_mask > 0, positions, 1).astype(jnp.int32)


def check_tokens(tokens, config: GPTNeoConfig, positions=None):
    """Raise a clear ValueError for token batches the model cannot take. Shapes are checked always,
    values only when they are concrete (an eager call, or a host-side check before jit)."""
    traced = isinstance(tokens, jax.core.Tracer)
    tokens = tokens if traced else np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
    if tokens.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {tokens.shape[1]} exceeds max_position_embeddings={config.max_position_embeddings}; "
            "truncate the input (keep the last tokens) or use a config with more positions")
    if traced:
        return
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= config.vocab_size)]
        raise ValueError(f"token ids {sorted(set(bad.tolist()))[:5]} are outside the vocabulary "
                         f"[0, {config.vocab_size}); was the text encoded with a different tokenizer?")
    if positions is not None and not isinstance(positions, jax.core.Tracer):
        positions = np.asarray(positions)
        if positions.size and (positions.min() < 0 or positions.max() >= config.max_position_embeddings):
            raise ValueError(f"position ids must lie in [0, {config.max_position_embeddings})")
