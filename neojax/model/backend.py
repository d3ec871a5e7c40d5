"""Backend-specific choices in one place, switched by the explicit `GPTNeoConfig.platform` option
("auto" follows `jax.default_backend()`; "cpu", "gpu" or "tpu" force a choice, e.g. to compile for
another machine or to compare). The model and decoding ask these functions, never the backend.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PLATFORMS = ("auto", "cpu", "gpu", "tpu")


def platform(config) -> str:
    return jax.default_backend() if config.platform == "auto" else config.platform


def xla_cpu_workarounds(config) -> bool:
    """XLA:CPU's layouts and fusions (below) cost time elsewhere, so they are used on CPUs only."""
    return platform(config) == "cpu"


def fused_attention(config) -> bool:
    """cuDNN's fused attention exists on GPUs only."""
    return platform(config) == "gpu"


def rows_times(weight_t, x):
    """x @ weight_t.T for a few rows (decoding) with the [out, in] weight as the left operand and a
    feature-major result: XLA's CPU matmuls run about twice as fast so at 16 rows. The barrier keeps
    the transpose back a separate, small copy instead of a change of the product's layout."""
    y = jnp.einsum("nk,mk->nm", weight_t, x.reshape(-1, x.shape[-1]), preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(y).T.reshape(*x.shape[:-1], -1)


@jax.custom_vjp
def gradient_boundary(x):
    """Identity whose gradient is materialised. Otherwise XLA:CPU fuses the residual stream's
    gradient chain, through every layer above, into each consumer and recomputes it there: that
    was 8 of the 49 s of a 125M training step at T=2048."""
    return x


def materialise(g):
    """g in a buffer of its own. XLA:CPU fuses straight through optimization_barrier, but a
    conditional is a fusion boundary; a predicate read from the data, and branches that differ
    in form (+ 0) but not in value, keep it from being folded away."""
    return jax.lax.cond(g.ravel()[0] == g.ravel()[0], lambda y: y, lambda y: y + 0, g)


gradient_boundary.defvjp(lambda x: (x, None), lambda _, g: (materialise(g),))
