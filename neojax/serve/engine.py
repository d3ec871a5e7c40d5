"""Continuous batching: one thread owns the model and a slot KV cache.

The cache has `max_batch` rows (slots) of `max_len` positions. A request (one choice of it) waits
in a bounded queue, takes a free slot, has its prompt prefilled in chunks of `chunk` tokens, and
leaves its slot the step it finishes. A step spends a budget of `step_tokens`: one decode token for
every slot generating, the rest on prompt chunks, several prompts' chunks in one program (a batch
of P rows, P a power of two). Every program has fixed shapes ([max_batch] decode, [P, chunk]
prefill), all compiled by `warm_up`, so no request compiles anything. Rows never see each other's cache entries
(`extend_attention`: a query sees only its own row's slots up to its own position). The host reads
a step's tokens before dispatching the next (EOS and lengths decide its rows), but turns them into
text (detokenising, stop strings, streaming) while the device runs the next step.

With a draft model (a smaller one with the same tokenizer) each decode step is speculative
(neojax.generate.speculative): the draft proposes `draft_tokens` tokens for every decoding row, the
target scores them in one step and every row keeps its own share, 1 to k+1 tokens; the draft's
cache (prefilled with the prompts, in the same slot rows) follows the target's. The decode then
runs on a bucket of the decoding rows only (1, 2, 4, ... rows), so a lightly loaded server does the
work of its few streams.

On a mesh over several hosts (neojax.serve.relay) process 0's engine schedules, and every program
call it makes (the methods marked `_everywhere`) is posted first and replayed by the other
processes' engines (`follow`), so each process's shards stay in step.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import threading
import traceback
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from neojax import sharding
from neojax.generate import TextStream, decode_weights
from neojax.generate.speculative import propose, taken, verify
from neojax.model.attention import slot_caches
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo
from neojax.sampling import draw, filter_logits
from neojax.serve.relay import STOP, Relay

TOP_LOGPROBS = 5  # the most top logprobs a request may ask for (OpenAI's completions limit)
_SEEDS = itertools.count(1)  # fresh seeds for requests that give none


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclasses.dataclass
class Settings:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple = ()
    seed: Optional[int] = None


@dataclasses.dataclass
class Sequence:
    """One choice: a prompt, its slot, and what has been generated."""
    prompt: list[int]
    settings: Settings
    on_event: Callable[[dict], None]  # called from the engine thread: {"text", "tokens"} or {"finish_reason"}
    choice: int = 0
    echo_logprobs: bool = False  # score the prompt's own tokens too (echo with logprobs)
    tokens: list = dataclasses.field(default_factory=list)      # generated ids (the stop token excluded)
    logprobs: list = dataclasses.field(default_factory=list)    # their log-probabilities
    top: list = dataclasses.field(default_factory=list)         # their top-5 (id, logprob) pairs
    prompt_logprobs: list = dataclasses.field(default_factory=list)  # of prompt tokens 1.. (echo)
    prompt_top: list = dataclasses.field(default_factory=list)
    finish_reason: Optional[str] = None
    cancelled: bool = False
    stream: Optional[TextStream] = None
    shown_tokens: int = 0  # tokens its stream has turned into text (the host's part lags a step)
    filled: int = 0          # prompt tokens in the cache
    slot: int = -1
    seed: int = 0            # of the request's random streams (settings.seed, else a fresh one)
    looked_up: bool = False  # its prompt's blocks were looked for in the prefix cache
    gated: list = dataclasses.field(default_factory=list)  # text pieces the moderation gate passed
    shown: Optional[str] = None  # the text shown when the moderation gate cut the choice

    def __post_init__(self):
        self.seed = (next(_SEEDS) * 7919 if self.settings.seed is None else self.settings.seed) % (2 ** 32)

    @property
    def length(self) -> int:
        """Tokens in the cache: the prompt's, then one per decode step."""
        return self.filled + max(len(self.tokens) - 1, 0)

    @property
    def prefilling(self) -> bool:
        return self.filled < len(self.prompt)

    @property
    def decoding(self) -> bool:
        return not self.prefilling and bool(self.tokens)


class Sampling(NamedTuple):
    """Per row: its sampling settings, seed, choice index and draw index (its n-th token)."""
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    seeds: np.ndarray
    choices: np.ndarray
    draws: np.ndarray


class Scores(NamedTuple):
    """Per position (or row): a token's log-probability and the top-5 ids and log-probabilities."""
    logprob: jax.Array
    top_ids: jax.Array
    top_lp: jax.Array


class Drawn(NamedTuple):
    token: jax.Array
    scores: Scores


def _scores(logits, tokens) -> Scores:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return Scores(jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0], top_ids, top_lp)


def _next(logits, sampling: Sampling) -> Drawn:
    """Per row: the next token (neojax.sampling: what `generate` draws with the same seed) and its scores."""
    token = draw(logits, *sampling)
    return Drawn(token, _scores(logits, token))


def _everywhere(method):
    """A program call that a multi-host server's other processes make too: posted (its name and host
    arguments) before process 0 makes it."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.relay is not None:
            self.relay.post((method.__name__, args, kwargs))
        return method(self, *args, **kwargs)
    return run


class Engine:
    def __init__(self, params, config: GPTNeoConfig, tokenizer, max_batch: int = 16, max_len: Optional[int] = None,
                 chunk: int = 64, max_queue: int = 256, step_tokens: int = 512, prefix_cache_mb: int = 0,
                 relay: Optional[Relay] = None, draft: Optional[tuple] = None, draft_tokens: int = 4):
        params = sharding.on_device(params)  # not copied in again by every step
        self.params, self.config, self.tokenizer, self.relay = params, config, tokenizer, relay
        # the draft model's (params, config); its cache layers follow the target's in self.cache
        self.draft_params, self.draft_config = (None, None) if draft is None else (sharding.on_device(draft[0]),
                                                                                    draft[1])
        self.k = draft_tokens if draft is not None else 0
        self.max_batch, self.chunk, self.max_queue = max_batch, chunk, max_queue
        self.step_tokens = step_tokens
        # prompt chunks one step may prefill together: a power of two within the budget and the slots
        self.max_prefill = 1 << (max(1, min(max_batch, step_tokens // chunk)).bit_length() - 1)
        self.max_len = min(max_len or config.max_position_embeddings, config.max_position_embeddings)
        # Placed params (sharding.place): the caches split by head as the heads are, in every program
        mesh, self.cache_sharding = sharding.mesh_of(params), None
        if mesh is not None:
            self.cache_sharding = jax.tree.map(lambda x: NamedSharding(mesh, sharding.cache_spec(x.ndim)),
                                               jax.eval_shape(self._new_cache))
        replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        self.cache = self._new_cache()
        self.slots: list[Optional[Sequence]] = [None] * max_batch
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.steps = 0
        self.transposed = decode_weights(params, config)  # the copies generate's decode steps use
        self.draft_transposed = None if draft is None else decode_weights(self.draft_params, self.draft_config)
        # Prefix reuse: the KV entries of whole prompt chunks ("blocks"), by the exact tokens up to the
        # block's end, least recently used first out, in a store of as many blocks as fit the budget.
        block = jax.eval_shape(lambda: self._new_cache(rows=1, slots=chunk))  # shapes only: nothing allocated
        block_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(block))
        self.prefix_blocks = prefix_cache_mb * 2 ** 20 // block_bytes
        self.store = self._new_cache(rows=self.prefix_blocks, slots=chunk) if self.prefix_blocks else None
        self.prefixes: collections.OrderedDict = collections.OrderedDict()  # prompt[:end] -> block
        self.reused_tokens = 0
        self.proposed = self.kept = 0  # the draft's proposals, and those kept
        pin = functools.partial(_pinned, shardings=self.cache_sharding, results=replicated)
        self._save = jax.jit(pin(_copy_block), donate_argnums=0)      # store <- cache row
        self._restore = jax.jit(pin(_copy_block), donate_argnums=0)   # cache row <- store
        self._prefill = jax.jit(pin(functools.partial(_prefill, config=config, draft_config=self.draft_config)),
                                donate_argnums=2, static_argnames="scored")
        self._decode = jax.jit(pin(functools.partial(_decode, config=config)), donate_argnums=2)
        self._speculate = jax.jit(pin(functools.partial(_speculate, config=config, draft_config=self.draft_config,
                                                        k=self.k)), donate_argnums=4)
        self.thread = threading.Thread(target=self._run, name="neojax-engine", daemon=True)

    # --- the API side ---------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compile both programs (fixed shapes: nothing compiles after this)."""
        b, c = self.max_batch, self.chunk
        zeros = lambda n, dtype=np.int32: np.zeros(n, dtype)
        for rows, scored in [(p, False) for p in _buckets(self.max_prefill)] + [(1, True)]:
            self.cache, *_ = self._prefill(self.params, self.draft_params, self.cache, zeros((rows, c)), zeros(rows),
                                           zeros(rows), np.ones(rows, np.int32), zeros((rows, c)),
                                           self._sampling([None] * rows), scored=scored)
        if self.k:
            for rows in _buckets(self.max_batch):
                self.cache, *_ = self._speculate(self.params, self.transposed, self.draft_params,
                                                 self.draft_transposed, self.cache, zeros(rows), zeros(rows),
                                                 zeros(rows), np.ones(rows, np.int32), self._sampling([None] * rows))
        else:
            self.cache, _ = self._decode(self.params, self.transposed, self.cache, zeros(b), zeros(b),
                                         self._sampling([None] * b))
        if self.store is not None:
            zero = np.int32(0)
            self.store = self._save(self.store, self.cache, zero, zero, zero, zero)
            self.cache = self._restore(self.cache, self.store, zero, zero, zero, zero)
        jax.block_until_ready(self.cache)

    def start(self) -> None:
        self.thread.start()

    def submit(self, seqs: list[Sequence]) -> None:
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the queue holds {self.max_queue})")
            self.waiting.extend(seqs)
            self.cond.notify()

    def cancel(self, seqs: list[Sequence]) -> None:
        """The client went away: the slots are freed at the next step."""
        with self.cond:
            for seq in seqs:
                seq.cancelled = True
            self.cond.notify()

    def shutdown(self) -> None:
        """End every waiting and running sequence with finish_reason "abort", then stop the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=60)

    def busy(self) -> dict:
        with self.cond:
            speculative = {"draft_proposed": self.proposed, "draft_kept": self.kept} if self.k else {}
            return {"running": sum(s is not None for s in self.slots), "waiting": len(self.waiting),
                    "slots": self.max_batch, "steps": self.steps, **speculative}

    # --- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and not any(self.slots):
                    self.cond.wait()
                if self.stopping:
                    break
                self._admit()
            self._step()
        for seq in list(self.waiting) + [s for s in self.slots if s is not None]:
            self._finish(seq, "abort")
        self.waiting.clear()
        if self.relay is not None:
            self.relay.post(STOP)

    def follow(self, relay: Relay) -> None:
        """Another process of a multi-host server: make process 0's program calls, in order, until it
        stops. A call that fails fails on process 0 too, which then decides (as it does alone)."""
        while (message := relay.receive()) != STOP:
            name, args, kwargs = message
            try:
                getattr(self, name)(*args, **kwargs)
            except Exception:
                traceback.print_exc()

    def _step(self) -> None:
        """Prompt chunks within the step's token budget (what the decoding slots leave of it; at least
        one chunk, so prompts always advance), then one decode step of every slot generating."""
        self._drop_cancelled()
        filling = [s for s in self.slots if s is not None and s.prefilling]
        for seq in filling:
            if not seq.looked_up:
                self._isolated([seq], self._reuse_prefix)
        filling = [s for s in filling if s.finish_reason is None]
        if filling:
            generating = sum(s is not None and s.decoding for s in self.slots)
            room = min(self.max_prefill, max(1, (self.step_tokens - generating) // self.chunk))
            scored = [s for s in filling if s.echo_logprobs][:1]  # a prompt scored position by position: alone
            self._isolated(scored or [s for s in filling if not s.echo_logprobs][:room], self._prefill_chunks)
        decoding = [s for s in self.slots if s is not None and s.decoding]
        if decoding:
            self._isolated(decoding, self._speculate_step if self.k else self._decode_step)
        else:
            self._stream_pending()
        self.steps += 1

    def _isolated(self, seqs: list[Sequence], step: Callable) -> None:
        """step(seqs); if it fails, each sequence on its own, so that a failure ends only the
        sequences that cause it ("error") and the others go on. A failure that took the cache with
        it (its buffers were donated to the step) ends every running sequence, and a fresh cache
        serves the requests that come next."""
        try:
            step(seqs)
        except Exception:
            if not self._cache_alive():
                traceback.print_exc()
                for seq in [s for s in self.slots if s is not None]:
                    self._finish(seq, "error")
                self._reset_cache()
            elif len(seqs) == 1:
                traceback.print_exc()
                self._finish(seqs[0], "error")
            else:
                for seq in seqs:
                    if seq.finish_reason is None:
                        self._isolated([seq], step)

    def _cache_alive(self) -> bool:
        return not any(leaf.is_deleted() for leaf in jax.tree.leaves(self.cache))

    def _new_cache(self, rows: Optional[int] = None, slots: Optional[int] = None) -> list:
        """The slot cache (max_batch rows; room for a whole chunk, or a speculative step, past max_len:
        writes never wrap onto earlier entries), or another shape of it (the prefix store); the
        draft's layers after the target's."""
        rows, slots = rows or self.max_batch, slots or self.max_len + max(self.chunk, self.k + 2)
        make = lambda: slot_caches(self.config, rows, slots) + (
            [] if self.draft_config is None else slot_caches(self.draft_config, rows, slots))
        if self.cache_sharding is None:
            return make()
        return jax.jit(make, out_shardings=self.cache_sharding)()  # born in its shards

    # --- the programs: the only device work after warm-up, each replayed by a multi-host server's
    # other processes (their arguments are host values) --------------------------------------------
    @_everywhere
    def _reset_cache(self) -> None:
        self.cache = self._new_cache()

    @_everywhere
    def _run_prefill(self, *host, scored: bool):
        self.cache, prompt, drawn = self._prefill(self.params, self.draft_params, self.cache, *host, scored=scored)
        return prompt, drawn

    @_everywhere
    def _run_speculate(self, *host):
        self.cache, drawn, taking = self._speculate(self.params, self.transposed, self.draft_params,
                                                    self.draft_transposed, self.cache, *host)
        return drawn, taking

    @_everywhere
    def _run_decode(self, *host):
        self.cache, drawn = self._decode(self.params, self.transposed, self.cache, *host)
        return drawn

    @_everywhere
    def _run_save(self, *host) -> None:
        self.store = self._save(self.store, self.cache, *host)

    @_everywhere
    def _run_restore(self, *host) -> None:
        self.cache = self._restore(self.cache, self.store, *host)

    def _admit(self) -> None:
        """Waiting sequences into free slots (a cancelled one is dropped, not given a slot)."""
        for i in range(self.max_batch):
            while self.slots[i] is None and self.waiting:
                seq = self.waiting.popleft()
                if not seq.cancelled:
                    seq.slot, seq.filled = i, 0
                    seq.stream = TextStream(self.tokenizer, seq.settings.stop)
                    self.slots[i] = seq

    def _drop_cancelled(self) -> None:
        for i, seq in enumerate(self.slots):
            if seq is not None and seq.cancelled:
                self.slots[i] = None

    def _sampling(self, seqs) -> Sampling:
        """The rows' sampling settings (an empty row: greedy)."""
        get = lambda f, default, dtype: np.array([default if s is None else f(s) for s in seqs], dtype)
        return Sampling(get(lambda s: s.settings.temperature, 0.0, np.float32),
                        get(lambda s: s.settings.top_k, 0, np.int32), get(lambda s: s.settings.top_p, 1.0, np.float32),
                        get(lambda s: s.seed, 0, np.uint32), get(lambda s: s.choice, 0, np.uint32),
                        get(lambda s: len(s.tokens), 0, np.uint32))

    def _reuse_prefix(self, seqs: list[Sequence]) -> None:
        """Copy the cached blocks of a new sequence's prompt into its slot (whole chunks, matching
        exactly from the start; at least its last prompt token is left to prefill: its logits give
        the first new token). A prompt scored for echo logprobs is prefilled in full."""
        (seq,) = seqs
        seq.looked_up, c = True, self.chunk
        if self.store is None or seq.echo_logprobs:
            return
        while seq.filled + c < len(seq.prompt):
            block = self.prefixes.get(key := tuple(seq.prompt[:seq.filled + c]))
            if block is None:
                return
            self.prefixes.move_to_end(key)
            self._run_restore(np.int32(seq.slot), np.int32(seq.filled), np.int32(block), np.int32(0))
            seq.filled += c
            self.reused_tokens += c

    def _keep_block(self, seq: Sequence, end: int) -> None:
        """Keep the block of seq's prompt ending at `end` (just prefilled) in the prefix store."""
        key = tuple(seq.prompt[:end])
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return
        block = len(self.prefixes) if len(self.prefixes) < self.prefix_blocks else self.prefixes.popitem(last=False)[1]
        self._run_save(np.int32(block), np.int32(0), np.int32(seq.slot), np.int32(end - self.chunk))
        self.prefixes[key] = block

    def _prefill_chunks(self, seqs: list[Sequence]) -> None:
        """The next prompt chunk of each of seqs, in one program (padded to a bucket of rows by
        repeating the first); a prompt's last chunk gives its first new token."""
        c, rows = self.chunk, _buckets(self.max_prefill, len(seqs))
        padded = seqs + [seqs[0]] * (rows - len(seqs))
        tokens, targets = np.zeros((rows, c), np.int32), np.zeros((rows, c), np.int32)
        pieces = []
        for i, seq in enumerate(padded):
            piece = seq.prompt[seq.filled:seq.filled + c]
            following = seq.prompt[seq.filled + 1:seq.filled + 1 + c]
            tokens[i, :len(piece)], targets[i, :len(following)] = piece, following
            pieces.append((len(piece), len(following)))
        row_of = lambda f: np.array([f(s) for s in padded], np.int32)
        scored = seqs[0].echo_logprobs
        prompt, drawn = self._run_prefill(tokens, row_of(lambda s: s.slot), row_of(lambda s: s.filled),
                                          np.array([n for n, _ in pieces], np.int32), targets, self._sampling(padded),
                                          scored=scored)
        self._stream_pending()  # the last step's text, while the device runs this one
        if scored:
            prompt = jax.device_get(prompt)
        for i, seq in enumerate(seqs):
            if self.store is not None and pieces[i][0] == c:
                self._keep_block(seq, seq.filled + c)
        finished = [i for i, seq in enumerate(seqs) if seq.filled + pieces[i][0] == len(seq.prompt)]
        drawn = jax.device_get(drawn) if finished else None
        for i, seq in enumerate(seqs):
            if scored:
                for j in range(pieces[i][1]):
                    seq.prompt_logprobs.append(float(prompt.logprob[i, j]))
                    seq.prompt_top.append(list(zip(prompt.top_ids[i, j].tolist(), prompt.top_lp[i, j].tolist())))
            seq.filled += pieces[i][0]
            if i in finished:  # the prompt's last position gives the first new token
                if seq.settings.max_tokens == 0:
                    self._finish(seq, "length")
                else:
                    self._accept(seq, drawn, i)

    def _decode_step(self, seqs: list[Sequence]) -> None:
        rows = [None] * self.max_batch
        for seq in seqs:
            rows[seq.slot] = seq
        tokens = np.array([0 if s is None else s.tokens[-1] for s in rows], np.int32)
        # a row left out writes its (ignored) entry where its own next step will write anyway
        starts = np.array([0 if p is None else p.length if p.decoding else p.filled for p in self.slots], np.int32)
        drawn = self._run_decode(tokens, starts, self._sampling(rows))
        self._stream_pending()  # the last step's text, while the device runs this one
        drawn = jax.device_get(drawn)
        for i, seq in enumerate(rows):
            if seq is not None and not seq.cancelled and seq.finish_reason is None:
                try:
                    self._accept(seq, drawn, i)
                except Exception:
                    traceback.print_exc()
                    self._finish(seq, "error")

    def _speculate_step(self, seqs: list[Sequence]) -> None:
        """A speculative step of the decoding rows (a bucket of them, padded by repeating the first):
        each takes the 1 to k+1 tokens its row kept, up to where it finishes."""
        padded = seqs + [seqs[0]] * (_buckets(self.max_batch, len(seqs)) - len(seqs))
        row_of = lambda f: np.array([f(s) for s in padded], np.int32)
        drawn, taking = self._run_speculate(
            row_of(lambda s: s.slot), row_of(lambda s: s.tokens[-2] if len(s.tokens) > 1 else s.prompt[-1]),
            row_of(lambda s: s.tokens[-1]), row_of(lambda s: s.length), self._sampling(padded))
        self._stream_pending()  # the last step's text, while the device runs this one
        drawn, taking = jax.device_get((drawn, taking))
        self.proposed += self.k * len(seqs)
        self.kept += int(taking[:len(seqs)].sum()) - len(seqs)
        for i, seq in enumerate(seqs):
            for j in range(int(taking[i])):
                if seq.cancelled or seq.finish_reason is not None:
                    break
                try:
                    self._accept(seq, drawn, (i, j))
                except Exception:
                    traceback.print_exc()
                    self._finish(seq, "error")

    def _accept(self, seq: Sequence, drawn: Drawn, row) -> None:
        """Row `row` of drawn (on the host; with a draft, (row, position)) is seq's new token: stop at
        EOS, max_tokens or the end of the context. Its text (and a stop string in it) comes after the
        next step is dispatched (_stream_pending); a step run for a row a stop string ended is dropped."""
        token = int(drawn.token[row])
        if token == self.tokenizer.eos_id:
            return self._finish(seq, "stop")
        seq.tokens.append(token)
        seq.logprobs.append(float(drawn.scores.logprob[row]))
        seq.top.append(list(zip(drawn.scores.top_ids[row].tolist(), drawn.scores.top_lp[row].tolist())))
        if len(seq.tokens) >= seq.settings.max_tokens or seq.length + 1 >= self.max_len:
            self._finish(seq, "length")

    def _stream_pending(self) -> None:
        """The host's part of every running sequence's new tokens (text, stop strings, its listener):
        called with a step in flight. A failure ends only its own sequence."""
        for seq in self.slots:
            if seq is not None and seq.finish_reason is None and seq.shown_tokens < len(seq.tokens):
                try:
                    if self._stream(seq):
                        self._finish(seq, "stop")
                except Exception:
                    traceback.print_exc()
                    self._finish(seq, "error")

    def _stream(self, seq: Sequence) -> bool:
        """seq's tokens not yet shown into its stream, each piece of text emitted; at a stop string
        the tokens after it are dropped and True returned."""
        for j in range(seq.shown_tokens, len(seq.tokens)):
            text, stopped = seq.stream.add(seq.tokens[j])
            seq.shown_tokens = j + 1
            if text:
                _emit(seq, {"text": text, "tokens": j + 1})
            if stopped:
                del seq.tokens[j + 1:], seq.logprobs[j + 1:], seq.top[j + 1:]
                return True
        return False

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.finish_reason is not None:
            return
        try:
            rest = ""
            if seq.stream is not None and reason != "error":
                reason = "stop" if self._stream(seq) else reason  # its last tokens' text first
                rest = seq.stream.flush()
        except Exception:
            traceback.print_exc()
            rest, reason = "", "error"
        if rest:
            _emit(seq, {"text": rest, "tokens": len(seq.tokens)})
        seq.finish_reason = reason
        if 0 <= seq.slot < self.max_batch and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
        _emit(seq, {"finish_reason": reason})


def _emit(seq: Sequence, event: dict) -> None:
    """Hand an event to the request; one whose listener is gone (closed loop) is dropped."""
    try:
        seq.on_event(event)
    except Exception:  # RuntimeError from a closed loop, or whatever a listener raises
        seq.cancelled = True


def _copy_block(to, source, to_row, to_start, from_row, from_start):
    """`to` with the chunk-long run of entries at (from_row, from_start) of `source` written at
    (to_row, to_start), in every layer (a cache row's block into the prefix store, or back)."""
    def layer(dst, src):
        out = {}
        for name, x in dst.items():
            length = min(x.shape[2], src[name].shape[2])  # the store's blocks are one chunk long
            piece = jax.lax.dynamic_slice(src[name], (from_row, 0, from_start) + (0,) * (x.ndim - 3),
                                          (1, x.shape[1], length) + x.shape[3:])
            out[name] = jax.lax.dynamic_update_slice(x, piece, (to_row, 0, to_start) + (0,) * (x.ndim - 3))
        return out
    return [layer(d, s) for d, s in zip(to, source)]


def _pinned(program, shardings, results):
    """`program` with the cache it returns (its first result) kept in `shardings`: the cache a step
    donates comes back laid out as it went in, so no later step compiles again. Its other results
    (tokens, scores) are whole on every device (`results`): every process can read them."""
    if shardings is None:
        return program

    def run(*args, **kwargs):
        out = program(*args, **kwargs)
        if isinstance(out, list):
            return jax.lax.with_sharding_constraint(out, shardings)
        return (jax.lax.with_sharding_constraint(out[0], shardings),
                *jax.lax.with_sharding_constraint(out[1:], results))
    return run


def _buckets(largest: int, rows: Optional[int] = None):
    """The prefill programs' row counts (1, 2, 4, ... largest), or the one that fits `rows`."""
    sizes = [1 << i for i in range(largest.bit_length())]
    return sizes if rows is None else next(p for p in sizes if p >= rows)


def _prefill(params, draft_params, cache, tokens, rows, starts, counts, targets, sampling: Sampling, *, config,
             draft_config, scored):
    """Prompt chunks ([P, C]) of P sequences into their cache rows `rows` at slots starts[p].. (written
    in place; the draft's cache too, with a draft). Returns the cache, with `scored` the Scores of
    each position's next prompt token (else zeros: only each row's last position's logits are
    computed), and the token Drawn after each chunk's last valid position (counts[p] - 1)."""
    cache, drafts = _split(cache, config)
    if draft_config is not None:
        _, drafts = GPTNeo(draft_config).apply({"params": draft_params}, tokens, starts, drafts, rows, counts - 1,
                                               method=GPTNeo.extend)
    cache, prompt, drawn = _prefill_target(params, cache, tokens, rows, starts, counts, targets, sampling,
                                           config=config, scored=scored)
    return cache + drafts, prompt, drawn


def _split(cache: list, config) -> tuple[list, list]:
    """The engine's cache as (the target's layers, the draft's)."""
    n = len(config.attention_layers)
    return cache[:n], cache[n:]


def _prefill_target(params, cache, tokens, rows, starts, counts, targets, sampling: Sampling, *, config, scored):
    model = GPTNeo(config)
    if not scored:
        last, cache = model.apply({"params": params}, tokens, starts, cache, rows, counts - 1, method=GPTNeo.extend)
        shape = tokens.shape
        zeros = Scores(jnp.zeros(shape), jnp.zeros((*shape, TOP_LOGPROBS), jnp.int32),
                       jnp.zeros((*shape, TOP_LOGPROBS)))
        return cache, zeros, _next(last, sampling)
    logits, cache = model.apply({"params": params}, tokens, starts, cache, rows, method=GPTNeo.extend)
    last = jnp.take_along_axis(logits, (counts - 1)[:, None, None], axis=1)[:, 0]
    return cache, _scores(logits, targets), _next(last, sampling)


def _decode(params, transposed, cache, tokens, starts, sampling: Sampling, *, config):
    """One token for every row at its own position. Returns the cache and each row's token Drawn."""
    logits, cache = GPTNeo(config).apply(_stepping(params, transposed), tokens[:, None], starts, cache,
                                         method=GPTNeo.extend)
    return cache, _next(logits[:, 0], sampling)


def _stepping(params, transposed) -> dict:
    """The variables of a few-row step (decode_weights' copies where it made them)."""
    return {"params": params} if transposed is None else {"params": params, "transposed": transposed}


def _speculate(params, transposed, draft_params, draft_transposed, cache, rows, prev, last, starts,
               sampling: Sampling, *, config, draft_config, k):
    """P decoding rows (cache rows `rows`), each with its newest token `last` (not yet in the caches;
    its slot is starts[p]) and the token before it `prev`: the draft takes prev (again) and last,
    then proposes k tokens one at a time; the target scores last and the k proposals in one step,
    and `verify` keeps each row's share (greedy rows: what the target alone would take). Returns
    the cache, the tokens Drawn per position [P, k+1] and how many each row takes (kept + 1)."""
    target_cache, drafts = _split(cache, config)
    target, draft = GPTNeo(config), GPTNeo(draft_config)
    greedy = sampling.temperature == 0
    per_row = lambda x: x[:, None]  # a row's setting against its k+1 positions
    temperature, top_k, top_p = per_row(jnp.maximum(sampling.temperature, 1e-6)), per_row(sampling.top_k), \
        per_row(sampling.top_p)

    def keys(purpose):  # the row's streams for this step (its draw index), apart from the plain sampler's
        return jax.vmap(lambda s, c, t: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
            jax.random.key(s), c), t), purpose))(sampling.seeds, sampling.choices, sampling.draws)

    draft_vars = _stepping(draft_params, draft_transposed)
    logits, drafts = draft.apply(draft_vars, jnp.stack([prev, last], 1), starts - 1, drafts, rows,
                                 method=GPTNeo.extend)
    sampled = jnp.any(~greedy)  # else the draws and the sampled acceptance rule are skipped

    def pick(q, i):
        argmax = jnp.argmax(q, axis=-1).astype(jnp.int32)

        def sample():
            filtered = filter_logits(q, temperature[:, 0], top_k[:, 0], top_p[:, 0])
            return jnp.where(greedy, argmax, jax.vmap(jax.random.categorical)(keys(1 + i), filtered).astype(jnp.int32))
        return jax.lax.cond(sampled, sample, lambda: argmax)
    proposed, q_logits, drafts = propose(draft, draft_vars, logits[:, -1], drafts, starts + 1, pick, k, rows)
    p_logits, target_cache = target.apply(_stepping(params, transposed), jnp.concatenate([last[:, None], proposed], 1),
                                          starts, target_cache, rows, method=GPTNeo.extend)
    check = functools.partial(verify, p_logits, q_logits, proposed, temperature, top_k, top_p,
                              keys(k + 1), keys(k + 2))
    kept, final = jax.lax.cond(sampled, lambda: check(greedy), lambda: check(True))
    new = taken(proposed, kept, final)
    return target_cache + drafts, Drawn(new, _scores(p_logits, new)), kept + 1
