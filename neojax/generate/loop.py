"""`generate`: a batch of prompts continued by KV-cache decoding inside one compiled loop.

Prompts are left padded to a length bucket (powers of two) and the number of new tokens to a
multiple of 32, so a session compiles once per (batch, bucket), not per call or per token.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import PartitionSpec

from neojax import registry, sharding
from neojax.flops import matmul_params
from neojax.generate.drafted import speculative_program
from neojax.generate.stream import CALLS, WATCHERS, TextWatcher, cut
from neojax.infer import speculative
from neojax.infer.buckets import bucket
from neojax.infer.cache import can_grow, grow_cache
from neojax.infer.programs import decode_step, prefill
from neojax.infer.sampling import Sampling, draw
from neojax.infer.weights import decode_weights
from neojax.model.config import GPTNeoConfig
from neojax.model.layers import check_tokens

NEW_TOKEN_BUCKET = 32
MAX_PHASES = 4  # decode-loop phases with growing caches (each is compiled: see _phase_ends)


@dataclasses.dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per row, stop token excluded
    prompt_tokens: list[list[int]]
    texts: Optional[list[str]] = None  # decoded new text per row, cut before any stop string
    acceptance: Optional[float] = None  # with a draft model: the share of its proposals kept


def _phase_ends(max_new: int, batch: int, prompt_len: int, config: GPTNeoConfig) -> list[int]:
    """The steps at which the decode loop's phases end. A step reads its layers' whole caches, so
    each phase's cache holds only the slots that phase reaches. Each phase is compiled, so one
    phase unless the caches are a good part of what a step reads (8 x cached values >= matmul
    weights; docs/performance.md has the figures)."""
    slots = sum(registry.get("attention", kind).capacity(prompt_len + max_new, config)
                for kind in config.attention_layers)
    entries = batch * slots * 2 * config.hidden_size
    buckets = max_new // NEW_TOKEN_BUCKET
    phases = min(MAX_PHASES, buckets) if can_grow(config) and 8 * entries >= matmul_params(config) else 1
    return [-(-buckets * (j + 1) // phases) * NEW_TOKEN_BUCKET for j in range(phases)]


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL-style penalty as transformers applies it: seen tokens' logits /penalty (>0) or *penalty (<0)."""
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalised, logits)


def _whole(x):
    """`x` replicated when tracing under a mesh (sharding.using_mesh): what a host callback reads and returns."""
    return x if jax.sharding.get_abstract_mesh().empty else jax.lax.with_sharding_constraint(x, PartitionSpec())


def _host_step(call, tokens, step, done):
    return np.asarray(WATCHERS[int(call)](np.asarray(tokens), int(step), np.asarray(done)), dtype=bool)


@functools.partial(jax.jit, static_argnames=("config", "max_new", "greedy", "penalty", "host"))
def _generate_program(params, transposed, tokens, mask, numbers, seed, temperature, top_k, top_p, repetition_penalty,
                      stop_tokens, n_new, call, *, config: GPTNeoConfig, max_new: int, greedy: bool, penalty: bool,
                      host: bool):
    batch, prompt_len = tokens.shape
    ends = _phase_ends(max_new, batch, prompt_len, config)
    logits, cache, position = prefill(params, config, tokens, mask, prompt_len + ends[0])
    seen = (jnp.zeros((batch, config.vocab_size), bool).at[jnp.arange(batch)[:, None], tokens].set(mask > 0)
            if penalty else jnp.zeros((batch, 1), bool))
    out = jnp.zeros((batch, max_new), jnp.int32)
    lengths = jnp.zeros((batch,), jnp.int32)
    done = jnp.zeros((batch,), bool)

    def cond(c):
        i, _, _, _, _, _, _, done = c
        return (i < n_new) & ~jnp.all(done)

    def body(c):
        i, logits, cache, position, seen, out, lengths, done = c
        if penalty:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        every = lambda x: jnp.full((batch,), x)
        token = draw(logits, Sampling(every(temperature), every(top_k), every(top_p), every(seed),
                                      numbers, every(i).astype(jnp.uint32)), greedy=greedy)
        token = jnp.where(done, 0, token)
        out = out.at[:, i].set(token)
        stopped = jnp.any(token[:, None] == stop_tokens[None, :], axis=-1)
        lengths = jnp.where(done | stopped, lengths, i + 1)
        if host:  # streaming and stop strings: the host sees each token and may end a row
            # on a mesh the host reads (and answers) whole arrays, not one device's rows
            stopped |= _whole(io_callback(_host_step, jax.ShapeDtypeStruct((batch,), jnp.bool_), call, _whole(token),
                                          i, _whole(done), ordered=True))
        done = done | stopped
        if penalty:
            seen = seen.at[jnp.arange(batch), token].set(True)
        position = position + 1
        logits, cache = decode_step(params, config, cache, token, position, prompt_len + i, transposed)
        return i + 1, logits, cache, position, seen, out, lengths, done

    carry = (jnp.int32(0), logits, cache, position, seen, out, lengths, done)
    for phase, end in enumerate(ends):
        if phase:
            carry = carry[:2] + (grow_cache(carry[2], config, prompt_len + end),) + carry[3:]
        carry = jax.lax.while_loop(lambda c: cond(c) & (c[0] < end), body, carry)
    return carry[5], carry[6]


def _check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed={seed}: use a seed from 0 to 2**32 - 1 (32 bits, as the server's)")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: ask for at least 1 new token")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature}: use 0 for greedy decoding or a finite positive value")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k={top_k}: use a count >= 0 (0 disables top-k filtering)")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p} is outside (0, 1]; use 1 to disable nucleus sampling")
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty={repetition_penalty} must be a finite number > 0 (1 disables it)")


def generate(params, config: GPTNeoConfig, prompts: Sequence, tokenizer=None, *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             stop_tokens: Optional[Sequence[int]] = None, stop_strings: Sequence[str] = (), seed: int = 0,
             truncate: bool = False, on_text: Optional[Callable[[int, str], None]] = None,
             weights=None, draft=None, draft_tokens: int = 4, numbers: Optional[Sequence[int]] = None) -> Generation:
    """Continue each prompt (a string, needing `tokenizer`, or a list of token ids).

    temperature 0 is greedy; a sampled row draws as neojax.infer.sampling says (row r with `seed` draws
    what the server's choice r with that seed draws). stop_tokens defaults to the EOS id;
    stop_strings end a row once its text contains one (the text is cut before it).
    `on_text(row, piece)` streams decoded text. Prompts that leave no room for max_new_tokens
    within the context raise, or are left truncated with truncate=True. `weights`: decode_weights(
    params, config), for a caller that generates repeatedly (made here otherwise). `draft`: (params,
    config) of a smaller model with the same tokenizer that proposes `draft_tokens` tokens a round
    (neojax.infer.speculative): the same greedy output, samples distributed as without it. `numbers`:
    each prompt's number in the key derivation (default its row, 0, 1, ...): sample j of a request
    numbered j draws the same tokens whatever batch it shares."""
    _check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    if isinstance(prompts, (str, np.ndarray)) or (len(prompts) and isinstance(prompts[0], (int, np.integer))):
        prompts = [prompts]
    if not len(prompts):
        raise ValueError("no prompts given")
    if (any(isinstance(p, str) for p in prompts) or stop_strings or on_text) and tokenizer is None:
        raise ValueError("text prompts, stop strings and streaming need a tokenizer")
    eos = tokenizer.eos_id if tokenizer is not None else config.eos_token_id
    encoded = [list(tokenizer.encode(p)) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    encoded = [ids or [eos] for ids in encoded]  # an empty prompt starts from <|endoftext|>
    encoded = fit(encoded, max_new_tokens, config, truncate)
    numbers = np.arange(len(encoded), dtype=np.uint32) if numbers is None else np.asarray(numbers, np.uint32)
    if numbers.shape != (len(encoded),):
        raise ValueError(f"numbers: give one per prompt ({len(encoded)}), not {numbers.shape}")
    if draft is not None:
        return _speculative(params, config, encoded, tokenizer, draft, draft_tokens, max_new_tokens, temperature,
                            top_k, top_p, repetition_penalty, stop_tokens, stop_strings, seed, on_text, weights,
                            numbers)
    mesh = sharding.mesh_of(params)  # placed params (sharding.place): rows split over the mesh's data axes
    rows = len(encoded)
    if mesh is not None:  # every data-parallel device gets as many rows (copies of row 0, dropped after)
        encoded = encoded + [encoded[0]] * (-rows % sharding.data_parallel(mesh))
        numbers = np.concatenate([numbers, np.full(len(encoded) - rows, numbers[0], np.uint32)])
    longest = max(len(ids) for ids in encoded)
    prompt_len = bucket(longest, 16, config.max_position_embeddings)
    tokens = np.zeros((len(encoded), prompt_len), np.int32)
    mask = np.zeros_like(tokens)
    for row, ids in enumerate(encoded):
        tokens[row, prompt_len - len(ids):] = ids
        mask[row, prompt_len - len(ids):] = 1
    check_tokens(tokens, config)
    max_new = -(-max_new_tokens // NEW_TOKEN_BUCKET) * NEW_TOKEN_BUCKET
    stops, stop_array = _stops(stop_tokens, eos)
    shown = on_text and (lambda row, piece: on_text(row, piece) if row < rows else None)
    with _watching(tokenizer, len(encoded), stop_strings, shown, stops) as (call, watcher):
        inputs = (tokens, mask, numbers, np.uint32(seed), np.float32(temperature or 1.0), np.int32(top_k),
                  np.float32(top_p), np.float32(repetition_penalty), stop_array, np.int32(max_new_tokens),
                  np.int32(call))
        with sharding.using_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            if mesh is not None:  # global arrays: the batch split over the data axes, the rest on every device
                inputs = tuple(sharding.put_global(x, mesh, sharding.batch_spec() if i < 3 else PartitionSpec())
                               for i, x in enumerate(inputs))
            transposed = decode_weights(params, config) if weights is None else weights
            out, lengths = _generate_program(
                params, transposed, *inputs, config=config, max_new=max_new, greedy=temperature == 0,
                penalty=repetition_penalty != 1.0, host=watcher is not None)
        out, lengths = sharding.gathered(out), sharding.gathered(lengths)
    new = [out[row, :lengths[row]].tolist() for row in range(rows)]
    texts = _texts(tokenizer, new, stop_strings, watcher)
    return Generation(tokens=new, prompt_tokens=encoded[:rows], texts=texts)


def _speculative(params, config, encoded, tokenizer, draft, k, max_new_tokens, temperature, top_k, top_p,
                 repetition_penalty, stop_tokens, stop_strings, seed, on_text, weights, numbers) -> Generation:
    """generate() with a draft model proposing k tokens a round (neojax.generate.drafted)."""
    draft_params, draft_config = draft
    speculative.check_draft(config, draft_config, k)
    if repetition_penalty != 1.0:
        raise ValueError("repetition_penalty changes the target's distribution token by token; speculative "
                         "decoding (draft=) does not apply it: use one or the other")
    if sharding.mesh_of(params) is not None or sharding.mesh_of(draft_params) is not None:
        raise ValueError("speculative decoding (draft=) runs on one device: pass host params, not placed ones")
    eos = tokenizer.eos_id if tokenizer is not None else config.eos_token_id
    width = bucket(max(len(ids) for ids in encoded), 16, config.max_position_embeddings)
    tokens = np.zeros((len(encoded), width), np.int32)
    for row, ids in enumerate(encoded):
        tokens[row, :len(ids)] = ids
    check_tokens(tokens, config)
    max_new = -(-max_new_tokens // NEW_TOKEN_BUCKET) * NEW_TOKEN_BUCKET
    stops, stop_array = _stops(stop_tokens, eos)
    with _watching(tokenizer, len(encoded), stop_strings, on_text, stops) as (call, watcher):
        rows = len(encoded)
        every = lambda x, dtype: np.full(rows, x, dtype)
        sampling = Sampling(every(temperature, np.float32), every(top_k, np.int32), every(top_p, np.float32),
                            every(seed, np.uint32), numbers, every(0, np.uint32))
        out, counts, kept, proposed = speculative_program(
            params, draft_params, decode_weights(params, config) if weights is None else weights,
            decode_weights(draft_params, draft_config), tokens, np.array([len(ids) for ids in encoded], np.int32),
            sampling, stop_array, np.int32(max_new_tokens), np.int32(call), config=config, draft_config=draft_config,
            k=k, max_new=max_new, greedy=temperature == 0, host=watcher is not None)
        out, counts = np.asarray(out), np.asarray(counts)
    new = [out[row, :counts[row]].tolist() for row in range(len(encoded))]
    texts = _texts(tokenizer, new, stop_strings, watcher)
    return Generation(tokens=new, prompt_tokens=encoded, texts=texts, acceptance=float(kept) / max(int(proposed), 1))


def _stops(stop_tokens, eos) -> tuple[list[int], np.ndarray]:
    """The stop tokens (default EOS), and as a -1-padded array of a bucketed size (no recompiles)."""
    stops = list(stop_tokens) if stop_tokens is not None else [eos]
    array = np.full(bucket(len(stops), 16), -1, np.int32)
    array[:len(stops)] = stops
    return stops, array


@contextlib.contextmanager
def _watching(tokenizer, rows, stop_strings, on_text, stops):
    """(call number, its TextWatcher or None without stop strings or streaming): the host side a
    compiled loop's callback finds by number while the call runs."""
    call, watcher = next(CALLS) % 2 ** 31, None
    if stop_strings or on_text:
        watcher = WATCHERS[call] = TextWatcher(tokenizer, rows, stop_strings, on_text, set(stops))
    try:
        yield call, watcher
    finally:
        WATCHERS.pop(call, None)


def _texts(tokenizer, new, stop_strings, watcher) -> Optional[list[str]]:
    """Each row's new text cut before a stop string; the watcher's held-back text streamed last."""
    if tokenizer is None:
        return None
    texts = [cut(tokenizer.decode(ids), stop_strings) for ids in new]
    if watcher is not None:
        watcher.flush()  # text held back as a possible stop-string prefix
    return texts


def fit(encoded: list[list[int]], max_new_tokens: int, config: GPTNeoConfig, truncate: bool) -> list[list[int]]:
    """The prompts (token ids) with room for max_new_tokens in the context: a longer one raises a
    ValueError naming it, or (truncate) keeps its last tokens."""
    room = config.max_position_embeddings - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                         f"max_position_embeddings={config.max_position_embeddings}")
    out = []
    for row, ids in enumerate(encoded):
        if len(ids) > room and not truncate:
            raise ValueError(f"prompt {row} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} at most "
                             f"{room} fit in the {config.max_position_embeddings}-token context. Shorten it, "
                             "lower max_new_tokens, or pass truncate=True (--truncate) to keep its last tokens")
        out.append(ids[-room:])
    return out


