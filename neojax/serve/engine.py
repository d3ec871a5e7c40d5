"""Continuous batching: one thread loops schedule -> run -> postprocess.

The `Scheduler` (no jax) admits requests into the slots of one KV cache and plans each step within
a token budget: prompt chunks of several sequences in one program, then one decode step of every
slot generating. The `Runner` owns params, cache and the compiled programs (neojax.infer), all
compiled by `warm_up`, so no request compiles anything; rows never see each other's cache entries.
`Postprocess` turns tokens into text (detokenising, stop strings, streaming) while the device runs
the next step. With a draft model (the same tokenizer, smaller) every decode step is a speculative
round: each row keeps 1 to k+1 tokens. Failures are handled in one place (`_guarded`).
"""
from __future__ import annotations

import dataclasses
import threading
import traceback
from typing import Callable, Optional

from neojax.generate import TextStream
from neojax.model.config import GPTNeoConfig
from neojax.serve.postprocess import Postprocess
from neojax.serve.relay import STOP, Relay
from neojax.serve.runner import Runner
from neojax.serve.scheduler import Scheduler, Sequence


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    max_batch: int = 16          # sequences decoded together (slots)
    max_len: Optional[int] = None  # tokens per slot (default: the model's context)
    chunk: int = 64              # prompt tokens a prefill program takes per sequence
    max_queue: int = 256         # requests that may wait for a slot
    step_tokens: int = 512       # a step's token budget (decode tokens, then prompt chunks)
    prefix_cache_mb: int = 0     # the store of reusable prompt blocks (0: off)
    draft_tokens: int = 4        # proposals a speculative round makes (with a draft model)


class Engine:
    def __init__(self, params, config: GPTNeoConfig, tokenizer, settings: EngineSettings = EngineSettings(), *,
                 draft: Optional[tuple] = None, relay: Optional[Relay] = None):
        """`draft`: (params, config) of a smaller model with the same tokenizer; `relay`: on a mesh over
        several hosts, process 0's runner posts its program calls and the others' `follow` them."""
        self.config, self.tokenizer, self.settings = config, tokenizer, settings
        self.max_len = min(settings.max_len or config.max_position_embeddings, config.max_position_embeddings)
        self.scheduler = Scheduler(settings.max_batch, settings.chunk, settings.step_tokens, settings.max_queue)
        self.runner = Runner(params, config, max_batch=settings.max_batch, max_len=self.max_len, chunk=settings.chunk,
                             max_prefill=self.scheduler.max_prefill, prefix_cache_mb=settings.prefix_cache_mb,
                             draft=draft, draft_tokens=settings.draft_tokens, relay=relay)
        self.post = Postprocess(tokenizer, self.max_len, self.scheduler)
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="neojax-engine", daemon=True)

    # --- the server's side ----------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compile every program (fixed shapes: nothing compiles after this)."""
        self.runner.warm_up()

    def start(self) -> None:
        self.thread.start()

    def submit(self, seqs: list[Sequence]) -> None:
        self.scheduler.submit(seqs)

    def cancel(self, seqs: list[Sequence]) -> None:
        """The client went away: the slots are freed at the next step."""
        self.scheduler.cancel(seqs)

    def shutdown(self) -> None:
        """End every waiting and running sequence with finish_reason "abort", then stop the thread."""
        self.scheduler.stop()
        if self.thread.is_alive():
            self.thread.join(timeout=60)

    def busy(self) -> dict:
        speculative = {"draft_proposed": self.runner.proposed, "draft_kept": self.runner.kept} if self.runner.k else {}
        return {**self.scheduler.load(), "steps": self.steps, **speculative}

    def follow(self, relay: Relay) -> None:
        """Another process of a multi-host server: replay process 0's program calls until it stops."""
        self.runner.follow(relay)

    # --- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while self.scheduler.wait_for_work(lambda seq: TextStream(self.tokenizer, seq.settings.stop)):
            self._step()
        for seq in self.scheduler.drain():
            self.post.finish(seq, "abort")
        if self.runner.relay is not None:
            self.runner.relay.post(STOP)

    def _step(self) -> None:
        self.scheduler.drop_cancelled()
        for seq in self.scheduler.unseen():
            self._guarded([seq], lambda seqs: self.runner.reuse_prefix(seqs[0]))
        if filling := self.scheduler.prefill_batch():
            self._guarded(filling, self._prefill)
        if decoding := self.scheduler.decoding():
            self._guarded(decoding, self._decode)
        else:
            self._stream_pending()
        self.steps += 1

    def _prefill(self, seqs: list[Sequence]) -> None:
        for seq, drawn, row in self.runner.prefill(seqs, self._stream_pending):
            if seq.settings.max_tokens == 0:
                self.post.finish(seq, "length")
            else:  # the prompt's last position gives the first new token
                self._guarded([seq], lambda _: self.post.accept(seq, drawn, row))

    def _decode(self, seqs: list[Sequence]) -> None:
        for seq, drawn, indices in self.runner.decode(seqs, self.scheduler.slots, self._stream_pending):
            for index in indices:
                if not seq.live:
                    break
                self._guarded([seq], lambda _: self.post.accept(seq, drawn, index))

    def _stream_pending(self) -> None:
        """The text of every running sequence's new tokens: called with a step in flight."""
        for seq in self.post.pending():
            self._guarded([seq], lambda seqs: self.post.stream(seqs[0]))

    def _guarded(self, seqs: list[Sequence], work: Callable[[list[Sequence]], None]) -> None:
        """work(seqs), and the one place failures are handled: a failure ends only the sequences that
        cause it ("error"; retried one by one to find them) and the others go on. A failure that took
        the cache with it (its buffers were donated to the program) ends every running sequence, and
        a fresh cache serves the requests that come next."""
        try:
            work(seqs)
        except Exception:
            if not self.runner.cache_alive():
                traceback.print_exc()
                for seq in self.scheduler.running():
                    self.post.finish(seq, "error")
                self.runner.reset_cache()
            elif len(seqs) == 1:
                traceback.print_exc()
                self.post.finish(seqs[0], "error")
            else:
                for seq in seqs:
                    if seq.finish_reason is None:
                        self._guarded([seq], work)
