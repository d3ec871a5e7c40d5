"""The engine's device side: params, the slot cache, the prefix store and the compiled programs
(neojax.infer.programs), every one compiled by `warm_up` for fixed shapes, so no request compiles
anything. It turns the scheduler's sequences into host arrays, runs a program, and reads back
only what the host needs.

On a mesh over several hosts (neojax.serve.relay) process 0's runner posts every program call
(the methods marked `_everywhere`, with their host arguments) before making it, and the other
processes' runners replay them (`follow`), so each process's shards stay in step.
"""
from __future__ import annotations

import functools
import traceback
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from neojax import sharding
from neojax.infer import programs
from neojax.infer.buckets import bucket, sizes
from neojax.infer.cache import copy_block, slot_caches
from neojax.infer.programs import Drawn
from neojax.infer.sampling import Sampling
from neojax.infer.weights import decode_weights
from neojax.model.config import GPTNeoConfig
from neojax.serve.relay import STOP, Relay
from neojax.serve.scheduler import PrefixBlocks, Sequence


def _everywhere(method):
    """A program call that a multi-host server's other processes make too: posted (its name and host
    arguments) before process 0 makes it."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.relay is not None and not self.warming:  # every process warms itself up
            self.relay.post((method.__name__, args, kwargs))
        return method(self, *args, **kwargs)
    return run


def sampling_of(seqs) -> Sampling:
    """The rows' sampling settings, seeds, choices and steps (an empty row: greedy)."""
    get = lambda f, default, dtype: np.array([default if s is None else f(s) for s in seqs], dtype)
    return Sampling(get(lambda s: s.settings.temperature, 0.0, np.float32),
                    get(lambda s: s.settings.top_k, 0, np.int32), get(lambda s: s.settings.top_p, 1.0, np.float32),
                    get(lambda s: s.seed, 0, np.uint32),
                    get(lambda s: s.choice, 0, np.uint32), get(lambda s: len(s.tokens), 0, np.uint32))


class Runner:
    def __init__(self, params, config: GPTNeoConfig, *, max_batch: int, max_len: int, chunk: int, max_prefill: int,
                 prefix_cache_mb: int = 0, draft: Optional[tuple] = None, draft_tokens: int = 4,
                 relay: Optional[Relay] = None):
        self.params, self.config, self.relay = sharding.on_device(params), config, relay  # not copied in every step
        self.warming = False
        self.draft_params, self.draft_config = (None, None) if draft is None else (sharding.on_device(draft[0]),
                                                                                    draft[1])
        self.k = draft_tokens if draft is not None else 0
        self.max_batch, self.max_len, self.chunk, self.max_prefill = max_batch, max_len, chunk, max_prefill
        # placed params (sharding.place): the caches split by head as the heads are, in every program
        mesh, self.cache_sharding = sharding.mesh_of(self.params), None
        if mesh is not None:
            self.cache_sharding = jax.tree.map(lambda x: NamedSharding(mesh, sharding.cache_spec(x.ndim)),
                                               jax.eval_shape(self._new_cache))
        self.cache = self._new_cache()
        self.weights = decode_weights(self.params, config)  # the copies generate's decode steps use
        self.draft_weights = None if draft is None else decode_weights(self.draft_params, self.draft_config)
        # prefix reuse: the KV entries of whole prompt chunks ("blocks") in a store of as many as fit
        block = jax.eval_shape(lambda: self._new_cache(rows=1, slots=chunk))  # shapes only: nothing allocated
        blocks = prefix_cache_mb * 2 ** 20 // sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(block))
        self.prefixes = PrefixBlocks(blocks)
        self.store = self._new_cache(rows=blocks, slots=chunk) if blocks else None
        self.reused_tokens = self.proposed = self.kept = 0  # prompt tokens restored; the draft's proposals, kept
        replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        leaves, treedef = jax.tree.flatten(self.cache_sharding)
        self._copy, self._prefill, self._decode, self._speculate = _programs(config, self.draft_config, self.k,
                                                                             tuple(leaves), treedef, replicated)

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

    def warm_up(self) -> None:
        """Compile every program for every row bucket (nothing compiles after this). Each process of a
        multi-host server runs its own warm-up: none of these calls is posted."""
        self.warming = True
        try:
            self._warm_up()
        finally:
            self.warming = False

    def _warm_up(self) -> None:
        zeros = lambda n, dtype=np.int32: np.zeros(n, dtype)
        for rows, scored in [(p, False) for p in sizes(self.max_prefill)] + [(1, True)]:
            self._run_prefill(zeros((rows, self.chunk)), zeros(rows), zeros(rows), np.ones(rows, np.int32),
                              zeros((rows, self.chunk)), sampling_of([None] * rows), scored=scored)
        if self.k:
            for rows in sizes(self.max_batch):
                self._run_speculate(zeros(rows), zeros(rows), zeros(rows), np.ones(rows, np.int32),
                                    sampling_of([None] * rows))
        else:
            self._run_decode(zeros(self.max_batch), zeros(self.max_batch), sampling_of([None] * self.max_batch))
        if self.store is not None:
            zero = np.int32(0)
            self._run_save(zero, zero, zero, zero)
            self._run_restore(zero, zero, zero, zero)
        jax.block_until_ready(self.cache)

    def follow(self, relay: Relay) -> None:
        """Another process of a multi-host server: make process 0's program calls, in order, until it
        stops. A call that fails fails on process 0 too, which then decides (as it does alone)."""
        while (message := relay.receive()) != STOP:
            name, args, kwargs = message
            try:
                getattr(self, name)(*args, **kwargs)
            except Exception:
                traceback.print_exc()

    def cache_alive(self) -> bool:
        return not any(leaf.is_deleted() for leaf in jax.tree.leaves(self.cache))

    # --- what the engine asks for ---------------------------------------------------------------
    def reuse_prefix(self, seq: Sequence) -> None:
        """Copy the stored blocks of a new sequence's prompt into its slot (whole chunks, matching
        exactly from the start; at least its last prompt token is left to prefill: its logits give
        the first new token). A prompt scored for echo logprobs is prefilled in full."""
        seq.looked_up, c = True, self.chunk
        if self.store is None or seq.echo_logprobs:
            return
        while seq.filled + c < len(seq.prompt):
            block = self.prefixes.find(seq.prompt[:seq.filled + c])
            if block is None:
                return
            self._run_restore(np.int32(seq.slot), np.int32(seq.filled), np.int32(block), np.int32(0))
            seq.filled += c
            self.reused_tokens += c

    def prefill(self, seqs: list[Sequence], overlap: Callable[[], None]) -> list[tuple[Sequence, Drawn, int]]:
        """The next prompt chunk of each of seqs in one program (padded to a bucket of rows by
        repeating the first); `overlap()` runs while the device works. Returns (seq, drawn, row) for
        each prompt that ended: its last position's logits give its first new token."""
        c, rows = self.chunk, bucket(len(seqs), largest=self.max_prefill)
        padded = seqs + [seqs[0]] * (rows - len(seqs))
        tokens, targets, lengths = np.zeros((rows, c), np.int32), np.zeros((rows, c), np.int32), []
        for i, seq in enumerate(padded):
            piece = seq.prompt[seq.filled:seq.filled + c]
            following = seq.prompt[seq.filled + 1:seq.filled + 1 + c]
            tokens[i, :len(piece)], targets[i, :len(following)] = piece, following
            lengths.append((len(piece), len(following)))
        row_of = lambda f: np.array([f(s) for s in padded], np.int32)
        scored = seqs[0].echo_logprobs
        prompt, drawn = self._run_prefill(tokens, row_of(lambda s: s.slot), row_of(lambda s: s.filled),
                                          np.array([n for n, _ in lengths], np.int32), targets, sampling_of(padded),
                                          scored=scored)
        overlap()
        prompt = jax.device_get(prompt) if scored else None
        ended = [i for i, seq in enumerate(seqs) if seq.filled + lengths[i][0] == len(seq.prompt)]
        drawn = jax.device_get(drawn) if ended else None
        for i, seq in enumerate(seqs):
            if self.store is not None and lengths[i][0] == c:
                self._keep_block(seq, seq.filled + c)
            for j in range(lengths[i][1] if scored else 0):
                seq.prompt_logprobs.append(float(prompt.logprob[i, j]))
                seq.prompt_top.append(list(zip(prompt.top_ids[i, j].tolist(), prompt.top_lp[i, j].tolist())))
            seq.filled += lengths[i][0]
        return [(seqs[i], drawn, i) for i in ended]

    def decode(self, seqs: list[Sequence], slots: list[Optional[Sequence]],
               overlap: Callable[[], None]) -> list[tuple[Sequence, Drawn, list]]:
        """A decode step of the generating sequences `seqs` (speculative with a draft) among every
        slot's; `overlap()` runs while the device works. Returns (seq, drawn, the indices of its new
        tokens in drawn, in order)."""
        if self.k:
            return self._speculate_rows(seqs, overlap)
        rows: list[Optional[Sequence]] = [None] * self.max_batch
        for seq in seqs:
            rows[seq.slot] = seq
        tokens = np.array([0 if s is None else s.tokens[-1] for s in rows], np.int32)
        # a row left out (free, or prefilling) writes its ignored entry where its own next step writes anyway
        starts = np.array([0 if s is None else s.length for s in slots], np.int32)
        drawn = self._run_decode(tokens, starts, sampling_of(rows))
        overlap()
        drawn = jax.device_get(drawn)
        return [(seq, drawn, [seq.slot]) for seq in seqs]

    def _speculate_rows(self, seqs, overlap):
        """A speculative round of the decoding rows (a bucket of them, padded by repeating the first):
        each takes the 1 to k+1 tokens its row kept."""
        padded = seqs + [seqs[0]] * (bucket(len(seqs), largest=self.max_batch) - len(seqs))
        row_of = lambda f: np.array([f(s) for s in padded], np.int32)
        drawn, taking = self._run_speculate(
            row_of(lambda s: s.slot), row_of(lambda s: s.tokens[-2] if len(s.tokens) > 1 else s.prompt[-1]),
            row_of(lambda s: s.tokens[-1]), row_of(lambda s: s.length), sampling_of(padded))
        overlap()
        drawn, taking = jax.device_get((drawn, taking))
        self.proposed += self.k * len(seqs)
        self.kept += int(taking[:len(seqs)].sum()) - len(seqs)
        return [(seq, drawn, [(i, j) for j in range(int(taking[i]))]) for i, seq in enumerate(seqs)]

    def _keep_block(self, seq: Sequence, end: int) -> None:
        """Keep the block of seq's prompt ending at `end` (just prefilled) in the prefix store."""
        block = self.prefixes.place(seq.prompt[:end])
        if block is not None:
            self._run_save(np.int32(block), np.int32(0), np.int32(seq.slot), np.int32(end - self.chunk))

    # --- the programs: the only device work after warm-up, each replayed by a multi-host server's
    # other processes (their arguments are host values) --------------------------------------------
    @_everywhere
    def reset_cache(self) -> None:
        self.cache = self._new_cache()

    @_everywhere
    def _run_prefill(self, *host, scored: bool):
        self.cache, prompt, drawn = self._prefill(self.params, self.draft_params, self.cache, *host, scored=scored)
        return prompt, drawn

    @_everywhere
    def _run_speculate(self, *host):
        self.cache, drawn, taking = self._speculate(self.params, self.weights, self.draft_params, self.draft_weights,
                                                    self.cache, *host)
        return drawn, taking

    @_everywhere
    def _run_decode(self, *host):
        self.cache, drawn = self._decode(self.params, self.weights, self.cache, *host)
        return drawn

    @_everywhere
    def _run_save(self, *host) -> None:
        self.store = self._copy(self.store, self.cache, *host)

    @_everywhere
    def _run_restore(self, *host) -> None:
        self.cache = self._copy(self.cache, self.store, *host)


@functools.lru_cache(maxsize=8)
def _programs(config, draft_config, k, sharding_leaves, treedef, replicated) -> tuple:
    """The engine's jitted programs (copy, prefill, decode, speculate), one set per model pair and
    layout: an engine started again in the same process (a restarted server, a test) compiles nothing
    its predecessor compiled."""
    pin = functools.partial(_pinned, shardings=jax.tree.unflatten(treedef, sharding_leaves), results=replicated)
    return (jax.jit(pin(copy_block), donate_argnums=0),  # store <- cache row, or back
            jax.jit(pin(functools.partial(programs.prefill_chunk, config=config, draft_config=draft_config)),
                    donate_argnums=2, static_argnames="scored"),
            jax.jit(pin(functools.partial(programs.decode_rows, config=config)), donate_argnums=2),
            jax.jit(pin(functools.partial(programs.speculate, config=config, draft_config=draft_config, k=k)),
                    donate_argnums=4))


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
