"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one step.

Each round the draft proposes d_1..d_k from its own distributions q_i, and the target scores the
row's last token and the k proposals in one (k+1)-token step, giving p_1..p_{k+1}. Greedy: the
proposals that equal the target's argmax are kept up to the first that does not, then the
target's own token: the target's greedy output. Sampled: d_i is kept with probability
min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token is drawn from max(0, p_i - q_i)
renormalised, and after k kept ones from p_{k+1} (Leviathan et al. 2023; Chen et al. 2023): every
token is distributed as a token drawn from the target alone. A round costs k draft steps and one
target step and yields 1 to k+1 tokens.

Both models keep per-row slot caches written by GPTNeo.extend (neojax.model.attention.extend_attention):
a row's entries past its kept length are never read, and the next round overwrites them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from neojax.generate.stream import WATCHERS
from neojax.model.attention import slot_caches
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo
from neojax.sampling import filter_logits

MAX_DRAFT_TOKENS = 16


class Round(NamedTuple):
    """What a decoding loop carries from round to round, per row."""
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


def check_draft(config: GPTNeoConfig, draft_config: GPTNeoConfig, k: int) -> None:
    """A ValueError when the draft cannot propose for this target."""
    if draft_config.vocab_size != config.vocab_size:
        raise ValueError(f"the draft model has a {draft_config.vocab_size}-token vocabulary and the target "
                         f"{config.vocab_size}: a draft must share the target's tokenizer")
    check_draft_tokens(k)


def check_draft_tokens(k: int) -> None:
    if not 1 <= k <= MAX_DRAFT_TOKENS:
        raise ValueError(f"draft_tokens={k}: propose between 1 and {MAX_DRAFT_TOKENS} tokens a round")


def _probs(logits, temperature, top_k, top_p):
    return jax.nn.softmax(filter_logits(logits, temperature, top_k, top_p), axis=-1)


def verify(p_logits, q_logits, proposed, temperature, top_k, top_p, accept_keys, final_keys, greedy):
    """Which leading proposals a row keeps, and the token after them: (kept [batch], final [batch]).
    p_logits [batch, k+1, vocab]: the target's at the row's newest token and at each of its k
    proposals; q_logits [batch, k, vocab]: the draft's that proposed them; settings scalars or one
    per row ([batch, 1]). Greedy rows (`greedy`: True, or a bool per row) keep the proposals equal to
    the target's argmax, then take its argmax; sampled rows follow the standard rule (module doc)."""
    k = proposed.shape[1]
    choice = jnp.argmax(p_logits, axis=-1).astype(jnp.int32)                  # [batch, k+1]
    agree = (choice[:, :k] == proposed).astype(jnp.int32)
    kept = jnp.sum(jnp.cumprod(agree, axis=1), axis=1)                       # leading agreements
    final = jnp.take_along_axis(choice, kept[:, None], axis=1)[:, 0]
    if greedy is True:
        return kept, final
    p = _probs(p_logits, temperature, top_k, top_p)                           # [batch, k+1, vocab]
    q = _probs(q_logits, temperature, top_k, top_p)                           # [batch, k, vocab]
    p_d = jnp.take_along_axis(p[:, :k], proposed[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q, proposed[..., None], axis=-1)[..., 0]
    u = jax.vmap(lambda kk: jax.random.uniform(kk, (k,)))(accept_keys)
    accepted = jnp.sum(jnp.cumprod((u * q_d < p_d).astype(jnp.int32), axis=1), axis=1)  # u < p/q (q > 0 where drawn)
    q_pad = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], 1)                 # after k kept: p itself
    at = lambda x: jnp.take_along_axis(x, accepted[:, None, None], axis=1)[:, 0]
    residual = jnp.maximum(at(p) - at(q_pad), 0.0)
    residual = jnp.where(residual.sum(-1, keepdims=True) > 0, residual, at(p))
    drawn = jax.vmap(jax.random.categorical)(final_keys, jnp.log(residual)).astype(jnp.int32)
    return jnp.where(greedy, kept, accepted), jnp.where(greedy, final, drawn)


def propose(draft: GPTNeo, variables: dict, q, cache, positions, pick, k: int, rows=None):
    """The draft's k proposals, one at a time: `q` ([batch, vocab]) is its next-token logits after
    the row's last token, `pick(logits, i)` chooses proposal i, and proposal i enters the draft's
    cache at positions + i. The k - 1 draft steps between proposals run as one loop, so the step is
    compiled once, not k times. Returns the proposals [batch, k], the logits each came from
    [batch, k, vocab] and the draft's cache."""
    def step(carry, i):
        q, cache = carry
        token = pick(q, i)
        logits, cache = draft.apply(variables, token[:, None], positions + i, cache, rows, method=GPTNeo.extend)
        return (logits[:, -1], cache), (token, q)
    (q, cache), (tokens, qs) = jax.lax.scan(step, (q, cache), jnp.arange(k - 1))
    proposed = jnp.concatenate([tokens.T, pick(q, k - 1)[:, None]], 1)
    return proposed, jnp.concatenate([jnp.moveaxis(qs, 0, 1), q[:, None]], 1), cache


def taken(proposed, kept, final):
    """[batch, k+1]: each row's kept proposals, then its final token, then zeros."""
    k = proposed.shape[1]
    new = jnp.where(jnp.arange(k + 1)[None] < kept[:, None], jnp.concatenate([proposed, proposed[:, :1]], 1),
                    final[:, None])
    return jnp.where(jnp.arange(k + 1)[None] <= kept[:, None], new, 0)


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
def speculative_program(params, draft_params, transposed, draft_transposed, tokens, counts, seed, temperature, top_k,
                        top_p, stop_tokens, n_new, call, *, config: GPTNeoConfig, draft_config: GPTNeoConfig, k: int,
                        max_new: int, greedy: bool, host: bool):
    """tokens [batch, width]: prompts left-aligned, counts[b] of them real; `transposed` and
    `draft_transposed`: decode_weights of each (the few-row steps multiply by them). Returns the new
    tokens [batch, max_new + k + 1], their count per row, and the proposals kept and made."""
    batch, width = tokens.shape
    slots = width + max_new + k + 2
    target, draft = GPTNeo(config), GPTNeo(draft_config)
    rows = jnp.arange(batch)
    zeros = jnp.zeros((batch,), jnp.int32)
    last_logits, target_cache = target.apply({"params": params}, tokens, zeros, slot_caches(config, batch, slots),
                                             None, counts - 1, method=GPTNeo.extend)
    _, draft_cache = draft.apply({"params": draft_params}, tokens, zeros, slot_caches(draft_config, batch, slots),
                                 None, counts - 1, method=GPTNeo.extend)
    base = jax.random.key(seed)
    stepping = lambda p, t: {"params": p} if t is None else {"params": p, "transposed": t}
    target_vars, draft_vars = stepping(params, transposed), stepping(draft_params, draft_transposed)

    def key(row_keys, purpose, round_):
        return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(r, purpose), round_))(row_keys)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(rows)

    def pick(logits, keys):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        filtered = filter_logits(logits, temperature, top_k, top_p)
        return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)

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

    first = pick(last_logits, key(row_keys, 0, 0))
    prev = jnp.take_along_axis(tokens, (counts - 1)[:, None], axis=1)[:, 0]
    out, count, done = commit(jnp.zeros((batch, max_new + k + 1), jnp.int32), zeros, zeros > 0, first[:, None],
                              zeros + 1)
    state = Round(target_cache, draft_cache, counts, first, prev, out, count, done, jnp.int32(0), jnp.int32(0),
                  jnp.int32(0))

    def body(s: Round) -> Round:
        r = s.rounds + 1
        # the draft: its cache gets `prev` (again: the same entry, or the one a round of k kept lacks)
        # and `last`, then proposes k tokens one step at a time
        logits, cache = draft.apply(draft_vars, jnp.stack([s.prev, s.last], 1), s.length - 1, s.draft_cache,
                                    method=GPTNeo.extend)
        proposed, q_logits, cache = propose(draft, draft_vars, logits[:, -1], cache, s.length + 1,
                                            lambda q, i: pick(q, key(row_keys, 1 + i, r)), k)  # [batch, k]
        p_logits, target_cache = target.apply(target_vars, jnp.concatenate([s.last[:, None], proposed], 1),
                                              s.length, s.target_cache, method=GPTNeo.extend)  # [batch, k+1, vocab]
        kept, final = verify(p_logits, q_logits, proposed, temperature, top_k, top_p,
                             key(row_keys, k + 1, r), key(row_keys, k + 2, r), greedy)
        new = taken(proposed, kept, final)
        n = kept + 1
        out, count, done = commit(s.out, s.count, s.done, new, n)
        prev = jnp.where(kept > 0, jnp.take_along_axis(proposed, jnp.maximum(kept - 1, 0)[:, None], axis=1)[:, 0],
                         s.last)
        kept_total = s.kept + jnp.sum(jnp.where(s.done, 0, kept))
        proposed_total = s.proposed + k * jnp.sum(~s.done)
        length = jnp.where(s.done, s.length, s.length + n)  # an ended row stays where it is
        return Round(target_cache, cache, length, final, prev, out, count, done, r, kept_total, proposed_total)

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done) & (s.rounds < max_new), body, state)
    return state.out, jnp.minimum(state.count, n_new), state.kept, state.proposed
