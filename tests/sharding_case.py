"""The model, batch and optimizer shared by the mesh tests and the multi-process worker."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from neojax.model import GPTNeoConfig

CASE_CONFIG = GPTNeoConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=8,
                           attention_types=[[["global", "local"], 1]], window_size=8, max_position_embeddings=64)


def case_batch(batch=8, seq=17, seed=0):
    return np.random.default_rng(seed).integers(0, CASE_CONFIG.vocab_size, size=(batch, seq)).astype(np.int32)


def case_optimizer():
    """Linear in the gradients (unlike Adam's first, sign-like step), so a sharded step can be
    compared with the single-device one at float32 reduction tolerance."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(0.1), optax.sgd(0.5, momentum=0.9))


def summarize(state, metrics):
    """Loss and per-parameter sums (reduced to replicated scalars, so every process can read them)."""
    wide = jnp.float64 if jax.config.x64_enabled else jnp.float32
    sums = jax.jit(lambda p: jax.tree.map(lambda x: jnp.sum(x.astype(wide)), p),
                   out_shardings=None)(state.params)
    flat = {jax.tree_util.keystr(k): float(v) for k, v in jax.tree_util.tree_leaves_with_path(sums)}
    return {"loss": float(metrics["loss"]), "param_sums": flat, "step": int(state.step)}
