"""Attention variants beyond GPT-Neo's own, each one function plus one registration.

Select them per layer like GPT-Neo's: `attention_types=[[["rotary", "local"], 6]]`. The learned
absolute position embeddings stay (so a checkpoint's other weights still fit); these variants add
relative position information on top, or replace softmax attention altogether.

A new variant needs no more than this file shows: write `attend` (and, if it is not a softmax over
a KV cache, `prefill` / `step`), register it, and `neojax.testing` tests it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from neojax import registry
from neojax.model.attention import AttentionVariant, global_attention


# --- rotary position embeddings --------------------------------------------------------------------
def rotary(q, k, positions, config, fraction: float = 1.0, base: float = 10000.0):
    """Rotary position embeddings (RoFormer, Su et al. 2021, arXiv:2104.09864), in the
    "rotate half" layout GPT-NeoX and Pythia use: the first `fraction` of each head's dimensions are
    rotated pairwise (i, i + r/2) by position * base^(-2i/r), so q.k depends on relative position."""
    r = int(config.head_dim * fraction) // 2 * 2
    inv_freq = base ** (-np.arange(0, r, 2, dtype=np.float64) / r)
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)  # [b, t, r/2]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]

    def rotate(x):
        x1, x2, rest = x[..., :r // 2].astype(jnp.float32), x[..., r // 2:r].astype(jnp.float32), x[..., r:]
        return jnp.concatenate([(x1 * cos - x2 * sin).astype(x.dtype), (x2 * cos + x1 * sin).astype(x.dtype), rest], -1)
    return rotate(q), rotate(k)


registry.register("attention", "rotary")(AttentionVariant(global_attention, qk=rotary))


# --- ALiBi -----------------------------------------------------------------------------------------
def alibi_slopes(num_heads: int) -> np.ndarray:
    """Head slopes of ALiBi (Press et al. 2022, "Train Short, Test Long", arXiv:2108.12409): the
    geometric sequence 2^(-8/n), 2^(-16/n), ... for n heads a power of two; otherwise those of the
    nearest lower power of two followed by every other slope of the next one (the paper's code)."""
    def power_of_two(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    low = 2 ** int(np.floor(np.log2(num_heads)))
    slopes = power_of_two(low)
    if low != num_heads:
        slopes += power_of_two(2 * low)[0::2][:num_heads - low]
    return np.asarray(slopes, np.float32)


def alibi_bias(config, distance):
    """[heads, *distance.shape]: -slope_h * (query slot - key slot)."""
    slopes = jnp.asarray(alibi_slopes(config.num_heads))
    return -slopes.reshape((-1,) + (1,) * distance.ndim) * distance.astype(jnp.float32)


def alibi_attention(q, k, v, key_mask, config, dropout=lambda p: p, positions=None):
    """Causal attention with ALiBi's linear distance penalty instead of rotating q and k."""
    return global_attention(q, k, v, key_mask, config, dropout, bias=functools.partial(alibi_bias, config))


registry.register("attention", "alibi")(AttentionVariant(alibi_attention, bias=alibi_bias))


# --- causal linear attention -----------------------------------------------------------------------
LINEAR_CHUNK = 64
_EPS = 1e-6


def _feature(x):
    """phi(x) = elu(x) + 1 > 0, in float32."""
    return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def linear_attention(q, k, v, key_mask, config, dropout=lambda p: p, positions=None):
    """Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs",
    arXiv:2006.16236; the original GPT-Neo code offered a "linear" attention type):
    out_i = phi(q_i) . sum_{j<=i} phi(k_j) v_j^T / phi(q_i) . sum_{j<=i} phi(k_j).

    Running sums cannot keep packed segments apart (registered with packed=False). O(T x head_dim^2):
    chunks of LINEAR_CHUNK positions attend to each other directly and to the running sums of all
    earlier chunks. There are no attention probabilities, so no dropout."""
    b, t, h, d = q.shape
    c = min(LINEAR_CHUNK, t)
    n = -(-t // c)
    pad = n * c - t
    qf, kf = _feature(q), _feature(k)
    if key_mask is not None:
        kf = kf * (key_mask > 0)[:, :, None, None]
    chunks = lambda x: jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]).reshape(b, n, c, h, -1)
    qf, kf, vf = chunks(qf), chunks(kf), chunks(v.astype(jnp.float32))
    kv = jnp.einsum("bnchd,bnche->bnhde", kf, vf)  # each chunk's sum of phi(k) v^T
    kv_before = jnp.cumsum(kv, axis=1) - kv  # sums over all earlier chunks
    z_before = jnp.cumsum(kf.sum(2), axis=1) - kf.sum(2)  # [b, n, h, d]
    causal = jnp.tril(jnp.ones((c, c), bool))
    scores = jnp.where(causal, jnp.einsum("bnqhd,bnkhd->bnhqk", qf, kf), 0.0)
    num = jnp.einsum("bnqhd,bnhde->bnqhe", qf, kv_before) + jnp.einsum("bnhqk,bnkhe->bnqhe", scores, vf)
    den = jnp.einsum("bnqhd,bnhd->bnqh", qf, z_before) + scores.sum(-1).transpose(0, 1, 3, 2)
    out = num / (den[..., None] + _EPS)
    return out.reshape(b, n * c, h, -1)[:, :t].astype(q.dtype)


def linear_prefill(k, v, key_mask, length, config):
    """The recurrent state after the prompt: S = sum phi(k) v^T [b, h, d, d], z = sum phi(k) [b, h, d]."""
    kf = _feature(k)
    if key_mask is not None:
        kf = kf * (key_mask > 0)[:, :, None, None]
    return {"kv": jnp.einsum("bthd,bthe->bhde", kf, v.astype(jnp.float32)), "z": kf.sum(1)}


def linear_step(q, k, v, cache, slot, config):
    qf, kf = _feature(q[:, 0]), _feature(k[:, 0])  # [b, h, d]
    kv = cache["kv"] + jnp.einsum("bhd,bhe->bhde", kf, v[:, 0].astype(jnp.float32))
    z = cache["z"] + kf
    out = jnp.einsum("bhd,bhde->bhe", qf, kv) / (jnp.einsum("bhd,bhd->bh", qf, z)[..., None] + _EPS)
    return out[:, None].astype(q.dtype), {"kv": kv, "z": z}


registry.register("attention", "linear")(AttentionVariant(
    linear_attention, prefill=linear_prefill, step=linear_step, packed=False,
    grow=lambda cache, length, config: cache))  # the recurrent state does not depend on the length
