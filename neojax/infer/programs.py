"""The pure decoding programs every driver runs (jit them with their static settings):

- fixed batch (`generate`, the harness, the samples hook, `prune --report`): `prefill` a left-padded
  batch, then `decode_step` one token a step (neojax.infer.cache's fixed-batch layout);
- slot rows (the engine; generate with a draft): `prefill_chunk` of some rows' prompts, `decode_rows`
  one token for every row at its own length, `speculate` a speculative round
  (neojax.infer.speculative) with the scores a server reports.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from neojax.infer.cache import split
from neojax.infer.sampling import Sampling, draw
from neojax.infer.speculative import speculative_round
from neojax.infer.weights import variables
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo
from neojax.model.layers import position_ids_from_mask

TOP_LOGPROBS = 5  # the most top logprobs a request may ask for (OpenAI's completions limit)


# --- the fixed batch ------------------------------------------------------------------------------
def prefill(params, config: GPTNeoConfig, tokens, attention_mask, cache_length: int):
    """Run the prompt ([batch, P], left padded) once. Returns (logits of the last slot [batch, vocab],
    cache sized for `cache_length` slots, position of the last prompt token per row)."""
    logits, cache = GPTNeo(config).apply({"params": params}, tokens, attention_mask, cache_length,
                                         method=GPTNeo.prefill)
    return logits, cache, position_ids_from_mask(attention_mask)[:, -1]


def decode_step(params, config: GPTNeoConfig, cache, token, position, slot, weights=None):
    """One token per row ([batch]) at cache `slot` and per-row `position`. Returns (logits, cache).
    `weights`: decode_weights(params, config), optional (the same maths, faster)."""
    return GPTNeo(config).apply(variables(params, weights), token[:, None], position[:, None], cache, slot,
                                method=GPTNeo.decode)


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


# --- slot rows ------------------------------------------------------------------------------------
class Scores(NamedTuple):
    """Per position (or row): a token's log-probability and the top-5 ids and log-probabilities."""
    logprob: jax.Array
    top_ids: jax.Array
    top_lp: jax.Array


class Drawn(NamedTuple):
    token: jax.Array
    scores: Scores


def scores(logits, tokens) -> Scores:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return Scores(jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0], top_ids, top_lp)


def _drawn(logits, sampling: Sampling) -> Drawn:
    """Per row: the next token (what `generate` draws with the same seed) and its scores."""
    token = draw(logits, sampling)
    return Drawn(token, scores(logits, token))


def prefill_chunk(params, draft_params, cache, tokens, rows, starts, counts, targets, sampling: Sampling, *,
                  config: GPTNeoConfig, draft_config: Optional[GPTNeoConfig], scored: bool):
    """Prompt chunks ([P, C]) of P sequences into their cache rows `rows` (None: rows 0..P-1) at slots
    starts[p].. (written in place; with a draft, its layers of the cache too). Returns the cache,
    with `scored` the Scores of each position's next prompt token `targets` (else zeros: only each
    row's last position's logits are computed), and the token Drawn after each chunk's last valid
    position (counts[p] - 1)."""
    cache, drafts = split(cache, config)
    if draft_config is not None:
        _, drafts = GPTNeo(draft_config).apply({"params": draft_params}, tokens, starts, drafts, rows, counts - 1,
                                               method=GPTNeo.extend)
    model = GPTNeo(config)
    if not scored:
        last, cache = model.apply({"params": params}, tokens, starts, cache, rows, counts - 1, method=GPTNeo.extend)
        shape = tokens.shape
        prompt = Scores(jnp.zeros(shape), jnp.zeros((*shape, TOP_LOGPROBS), jnp.int32),
                        jnp.zeros((*shape, TOP_LOGPROBS)))
    else:
        logits, cache = model.apply({"params": params}, tokens, starts, cache, rows, method=GPTNeo.extend)
        last = jnp.take_along_axis(logits, (counts - 1)[:, None, None], axis=1)[:, 0]
        prompt = scores(logits, targets)
    return cache + drafts, prompt, _drawn(last, sampling)


def decode_rows(params, weights, cache, tokens, starts, sampling: Sampling, *, config: GPTNeoConfig):
    """One token for every row at its own position. Returns the cache and each row's token Drawn."""
    logits, cache = GPTNeo(config).apply(variables(params, weights), tokens[:, None], starts, cache,
                                         method=GPTNeo.extend)
    return cache, _drawn(logits[:, 0], sampling)


def speculate(params, weights, draft_params, draft_weights, cache, rows, prev, last, starts, sampling: Sampling, *,
              config: GPTNeoConfig, draft_config: GPTNeoConfig, k: int):
    """A speculative round (neojax.infer.speculative.speculative_round) of P rows of the cache (the
    target's layers, then the draft's). Returns the cache, the tokens Drawn per position [P, k+1]
    and how many each row takes (kept + 1)."""
    target_cache, drafts = split(cache, config)
    target_cache, drafts, new, kept, p_logits = speculative_round(
        GPTNeo(config), variables(params, weights), GPTNeo(draft_config), variables(draft_params, draft_weights),
        target_cache, drafts, rows, prev, last, starts, sampling, k)
    return target_cache + drafts, Drawn(new, scores(p_logits, new)), kept + 1
