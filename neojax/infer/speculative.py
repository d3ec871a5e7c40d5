"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one step.

Each round the draft proposes d_1..d_k from its own distributions q_i, and the target scores the
row's last token and the k proposals in one (k+1)-token step, giving p_1..p_{k+1}. Greedy: the
proposals that equal the target's argmax are kept up to the first that does not, then the
target's own token: the target's greedy output. Sampled: d_i is kept with probability
min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token is drawn from max(0, p_i - q_i)
renormalised, and after k kept ones from p_{k+1} (Leviathan et al. 2023; Chen et al. 2023): every
token is distributed as a token drawn from the target alone. A round costs k draft steps and one
target step and yields 1 to k+1 tokens.

Both models keep slot-row caches (neojax.infer.cache) written by GPTNeo.extend: a row's entries
past its kept length are never read, and the next round overwrites them. `round` is the one
speculative step: generate's fixed-batch loop and the serving engine both run it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from neojax.infer.sampling import Sampling, draw, filter_logits, keys
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo

MAX_DRAFT_TOKENS = 16


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


def speculative_round(target: GPTNeo, target_vars: dict, draft: GPTNeo, draft_vars: dict, target_cache, draft_cache,
                      rows, prev, last, starts, sampling: Sampling, k: int, greedy: bool = False):
    """One speculative round for a batch of rows (cache rows `rows`, or every row if None), each with
    its newest token `last` (not yet in the caches; its slot is starts[b]) and the token before it
    `prev`: the draft takes prev (again: the same entry, or the one a round of k kept lacks) and last,
    then proposes k tokens one at a time; the target scores last and the k proposals in one step,
    and `verify` keeps each row's share (greedy rows: what the target alone would take). Draws use
    the rows' keys for this step (neojax.infer.sampling), purposes 1..k for the proposals and k+1,
    k+2 for the acceptance test; `greedy` (static): every row is greedy, the draws and the sampled
    rule are left out of the program. Returns (target cache, draft cache, the new tokens [batch, k+1]
    (taken), how many proposals each row kept, the target's logits [batch, k+1, vocab])."""
    rowwise = sampling.temperature == 0  # greedy rows
    sampled = jnp.any(~rowwise)  # else the draws and the sampled acceptance rule are skipped
    logits, draft_cache = draft.apply(draft_vars, jnp.stack([prev, last], 1), starts - 1, draft_cache, rows,
                                      method=GPTNeo.extend)
    proposed, q_logits, draft_cache = propose(draft, draft_vars, logits[:, -1], draft_cache, starts + 1,
                                              lambda q, i: draw(q, sampling, purpose=1 + i, greedy=greedy), k, rows)
    p_logits, target_cache = target.apply(target_vars, jnp.concatenate([last[:, None], proposed], 1), starts,
                                          target_cache, rows, method=GPTNeo.extend)
    per_row = lambda x: x[:, None]  # a row's setting against its k+1 positions
    check = lambda rule: verify(p_logits, q_logits, proposed, per_row(jnp.maximum(sampling.temperature, 1e-6)),
                                per_row(sampling.top_k), per_row(sampling.top_p),
                                keys(sampling, k + 1), keys(sampling, k + 2), rule)
    kept, final = check(True) if greedy else jax.lax.cond(sampled, lambda: check(rowwise), lambda: check(True))
    return target_cache, draft_cache, taken(proposed, kept, final), kept, p_logits
