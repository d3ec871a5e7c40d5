"""One sampler for every driver (generate, the engine, the training samples hook, speculative rounds).

Keys: row r's draw at step t (its t-th new token) uses fold_in(fold_in(key(seed), r), t); a draw
for another purpose within that step (a draft's proposal, an acceptance test) folds in the purpose
as well. Its randomness depends on the seed, the row's number (a sample or choice index), the
step and the purpose alone, never on the batch it shares or the program that runs it, so
`generate` and the server draw the same tokens for a seed.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

FAST_FILTER = 256  # candidates of the filters' fast path


class Sampling(NamedTuple):
    """Per row ([rows] arrays, traced: changing them never recompiles): temperature (0: greedy),
    top_k (0: off), top_p (1: off), the seed, the row's number and its step (new tokens so far)."""
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seeds: jax.Array
    rows: jax.Array
    steps: jax.Array


def keys(sampling: Sampling, purpose: Optional[int] = None):
    """The rows' keys for this step (see the module doc); `purpose`: a further stream within it."""
    def key(seed, row, step):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), row), step)
        return k if purpose is None else jax.random.fold_in(k, purpose)
    return jax.vmap(key)(sampling.seeds, sampling.rows, sampling.steps)


def filter_logits(logits, temperature, top_k, top_p):
    """Temperature, then top-k, then nucleus (top-p) filtering of logits [..., vocab]; removed
    tokens get -inf. Settings are scalars or one per row ([...]), traced: changing them never
    recompiles. top_k=0 and top_p=1 keep all.

    Exact, and fast where it can be: the thresholds come from the FAST_FILTER largest logits when
    top_k and the nucleus fit in them (a sort of the whole vocabulary costs far more on CPUs), from
    a full sort otherwise."""
    col = lambda a: jnp.asarray(a)[..., None]  # a per-row setting against [..., vocab]
    logits = logits / col(temperature)
    vocab = logits.shape[-1]
    top_k = jnp.broadcast_to(top_k, logits.shape[:-1])
    top_p = jnp.broadcast_to(top_p, logits.shape[:-1])

    def thresholds(desc):
        """(top-k threshold, nucleus threshold) from the largest logits in descending order."""
        kth = jnp.take_along_axis(desc, jnp.clip(top_k - 1, 0, desc.shape[-1] - 1)[..., None], axis=-1)
        desc = jnp.where((top_k[..., None] > 0) & (desc < kth), -jnp.inf, desc)
        kept = jnp.where((top_k[..., None] > 0) & (logits < kth), -jnp.inf, logits)
        unnormalised = jnp.exp(desc - jnp.max(kept, axis=-1, keepdims=True))  # as jax.nn.softmax computes
        probs = unnormalised / jnp.sum(jnp.exp(kept - jnp.max(kept, axis=-1, keepdims=True)), axis=-1, keepdims=True)
        cum = jnp.cumsum(probs, axis=-1)
        keep = jnp.sum((cum - probs) < top_p[..., None], axis=-1, keepdims=True)  # >= 1
        return kth, jnp.take_along_axis(desc, keep - 1, axis=-1), cum[..., -1]

    if vocab > FAST_FILTER:
        fast_kth, fast_threshold, covered = thresholds(jax.lax.top_k(logits, FAST_FILTER)[0])
        fits = jnp.all(top_k <= FAST_FILTER) & jnp.all((top_p >= 1) | (covered >= top_p))
        kth, threshold = jax.lax.cond(fits, lambda: (fast_kth, fast_threshold),
                                      lambda: thresholds(jnp.sort(logits, axis=-1)[..., ::-1])[:2])
    else:
        kth, threshold, _ = thresholds(jnp.sort(logits, axis=-1)[..., ::-1])
    logits = jnp.where((top_k[..., None] > 0) & (logits < kth), -jnp.inf, logits)
    return jnp.where((top_p[..., None] < 1) & (logits < threshold), -jnp.inf, logits)


def filtered(logits, sampling: Sampling):
    """filter_logits with the rows' settings (a greedy row's temperature taken as tiny, not 0)."""
    return filter_logits(logits, jnp.maximum(sampling.temperature, 1e-6), sampling.top_k, sampling.top_p)


def draw(logits, sampling: Sampling, purpose: Optional[int] = None, greedy: bool = False):
    """Per row of logits [rows, vocab]: the argmax at temperature 0, else a draw from the filtered
    distribution with the row's key (see the module doc). A step where every row is greedy skips
    the draw; `greedy` (static) leaves it out of the program."""
    argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if greedy:
        return argmax

    def sample():
        drawn = jax.vmap(jax.random.categorical)(keys(sampling, purpose), filtered(logits, sampling))
        return jnp.where(sampling.temperature == 0, argmax, drawn).astype(jnp.int32)

    return jax.lax.cond(jnp.any(sampling.temperature > 0), sample, lambda: argmax)
