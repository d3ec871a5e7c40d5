"""`generate` with a draft model: a fixed batch decoded by speculative rounds (neojax.infer.speculative)
in one compiled loop. Row r's tokens use the keys the server's choice r uses (its step is its count
of new tokens), so a seed gives the same text here and from `serve --draft`."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from neojax.generate.stream import WATCHERS
from neojax.infer.cache import slot_caches, split
from neojax.infer.programs import prefill_chunk
from neojax.infer.sampling import Sampling
from neojax.infer.speculative import speculative_round
from neojax.infer.weights import variables
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo


class Round(NamedTuple):
    """What the loop carries from round to round, per row."""
    target_cache: list
    draft_cache: list
    length: jax.Array   # tokens in both caches (the prompt's, then the kept ones)
    last: jax.Array     # the newest token, not yet in the caches (at slot `length`)
    prev: jax.Array     # the token at slot length - 1
    out: jax.Array      # [batch, max_new + k + 1] the new tokens
    count: jax.Array    # of them
    done: jax.Array
    rounds: jax.Array   # rounds run (a scalar)
    kept: jax.Array     # proposals kept, over every row and round (a scalar)
    proposed: jax.Array  # proposals made to rows still generating (a scalar)


def _host_round(call, tokens, counts, done):
    """The host's part of a round: row b's first counts[b] tokens one position at a time into the
    call's TextWatcher (streaming, stop strings); returns, per row, where a stop string ended it (-1:
    not)."""
    watcher = WATCHERS[int(call)]
    stop_at = np.full(len(tokens), -1, np.int32)
    for j in range(tokens.shape[1]):
        quiet = np.asarray(done) | (j >= counts) | (stop_at >= 0)
        stopped = watcher(tokens[:, j], j, quiet)
        stop_at = np.where(stopped & ~quiet, j, stop_at).astype(np.int32)
    return stop_at


@functools.partial(jax.jit, static_argnames=("config", "draft_config", "k", "max_new", "greedy", "host"))
def speculative_program(params, draft_params, weights, draft_weights, tokens, counts, sampling: Sampling, stop_tokens,
                        n_new, call, *, config: GPTNeoConfig, draft_config: GPTNeoConfig, k: int, max_new: int,
                        greedy: bool, host: bool):
    """tokens [batch, width]: prompts left-aligned, counts[b] of them real; `weights` and
    `draft_weights`: decode_weights of each; `sampling`: per row, its steps ignored (each row's is its
    count of new tokens); `greedy`: every row is (no draws in the program). Returns the new tokens
    [batch, max_new + k + 1], their count per row, and the proposals kept and made."""
    batch, width = tokens.shape
    slots = width + max_new + k + 2
    rows = jnp.arange(batch)
    zeros = jnp.zeros((batch,), jnp.int32)
    cache = slot_caches(config, batch, slots) + slot_caches(draft_config, batch, slots)
    cache, _, drawn = prefill_chunk(params, draft_params, cache, tokens, None, zeros, counts, tokens,
                                    sampling._replace(steps=zeros.astype(jnp.uint32)), config=config,
                                    draft_config=draft_config, scored=False)
    target_cache, draft_cache = split(cache, config)
    target, draft = GPTNeo(config), GPTNeo(draft_config)
    target_vars, draft_vars = variables(params, weights), variables(draft_params, draft_weights)

    def commit(out, count, done, new, n):
        """Row b's first n[b] tokens of `new` into `out` up to a stop token or (the host says) a
        stop string; returns out, count, and which rows ended."""
        width = new.shape[1]
        valid = jnp.arange(width)[None] < n[:, None]
        stop_hit = jnp.any(new[..., None] == stop_tokens[None, None], axis=-1) & valid
        first_stop = jnp.where(jnp.any(stop_hit, 1), jnp.argmax(stop_hit, 1), width)
        n_out = jnp.minimum(jnp.minimum(n, first_stop), n_new - count)  # before a stop token, within n_new
        ended = first_stop < n
        if host:  # streaming and stop strings: the host reads the round's tokens and may end a row
            stop_at = io_callback(_host_round, jax.ShapeDtypeStruct((batch,), jnp.int32), call, new, n_out, done,
                                  ordered=True)
            n_out = jnp.where(stop_at >= 0, jnp.minimum(n_out, stop_at + 1), n_out)
            ended |= stop_at >= 0
        n_out = jnp.where(done, 0, n_out)
        index = jnp.clip(count[:, None] + jnp.arange(width)[None], 0, out.shape[1] - 1)
        written = jnp.where(jnp.arange(width)[None] < n_out[:, None], new, out[rows[:, None], index])
        count = count + n_out
        return out.at[rows[:, None], index].set(written), count, done | ended | (count >= n_new)

    first = drawn.token
    prev = jnp.take_along_axis(tokens, (counts - 1)[:, None], axis=1)[:, 0]
    out, count, done = commit(jnp.zeros((batch, max_new + k + 1), jnp.int32), zeros, zeros > 0, first[:, None],
                              zeros + 1)
    state = Round(target_cache, draft_cache, counts, first, prev, out, count, done, jnp.int32(0), jnp.int32(0),
                  jnp.int32(0))

    def body(s: Round) -> Round:
        target_cache, draft_cache, new, kept, _ = speculative_round(
            target, target_vars, draft, draft_vars, s.target_cache, s.draft_cache, None, s.prev, s.last, s.length,
            sampling._replace(steps=s.count.astype(jnp.uint32)), k, greedy)
        n = kept + 1
        out, count, done = commit(s.out, s.count, s.done, new, n)
        final = jnp.take_along_axis(new, kept[:, None], axis=1)[:, 0]
        prev = jnp.where(kept > 0, jnp.take_along_axis(new, jnp.maximum(kept - 1, 0)[:, None], axis=1)[:, 0], s.last)
        kept_total = s.kept + jnp.sum(jnp.where(s.done, 0, kept))
        proposed_total = s.proposed + k * jnp.sum(~s.done)
        length = jnp.where(s.done, s.length, s.length + n)  # an ended row stays where it is
        return Round(target_cache, draft_cache, length, final, prev, out, count, done, s.rounds + 1, kept_total,
                     proposed_total)

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done) & (s.rounds < max_new), body, state)
    return state.out, jnp.minimum(state.count, n_new), state.kept, state.proposed
