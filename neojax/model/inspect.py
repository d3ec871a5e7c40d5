"""Look inside a trained model: the attention weights of any registered variant.

    weights = attention_weights(params, config, tokens, layer=0)   # [batch, heads, query, key]
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo, layer_variants


def attention_weights(params, config: GPTNeoConfig, tokens, layer: int) -> np.ndarray:
    """[batch, heads, T, T]: how much each query position draws on each key position's value in
    `layer`. Works for every variant without knowing its maths: the layer's own queries and keys
    are run through the variant with the identity matrix as values, so the output is the matrix
    that multiplies the values (softmax probabilities, or linear attention's normalised weights)."""
    config = config.replace(remat="none")
    out = _weights(params, jnp.asarray(tokens), config=config, layer=layer, variants=layer_variants(config))
    return np.asarray(jax.device_get(out.astype(jnp.float32))).transpose(0, 2, 1, 3)


@functools.partial(jax.jit, static_argnames=("config", "layer", "variants"))
def _weights(params, tokens, config: GPTNeoConfig, layer: int, variants: tuple):
    """One compiled program (run op by op, a small model took seconds), keyed by the layer variants."""
    b, t = tokens.shape
    _, state = GPTNeo(config).apply({"params": params}, tokens, mutable=["intermediates"],
                                    capture_intermediates=lambda module, _: module.name in ("q_proj", "k_proj"))
    attn = state["intermediates"][f"h_{layer}"]["attn"]
    q, k = (attn[n]["__call__"][0].reshape(b, t, config.num_heads, config.head_dim) for n in ("q_proj", "k_proj"))
    variant = variants[layer]
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    if variant.qk is not None:
        q, k = variant.qk(q, k, positions, config)
    identity = jnp.broadcast_to(jnp.eye(t, dtype=q.dtype)[None, :, None, :], (b, t, config.num_heads, t))
    return variant.attend(q, k, identity, None, config, positions=positions)  # [b, query, heads, key]
