"""What the engine runs next, decided on the host (no jax here): requests wait in a bounded queue,
take free slots, and each step spends a token budget on one decode token per generating slot and
prompt chunks with the rest. Prompt blocks already computed are found in `PrefixBlocks`.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from typing import Callable, Optional

from neojax.infer.buckets import below

_SEEDS = itertools.count(1)  # fresh seeds for requests that give none


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclasses.dataclass
class Settings:
    """A request's sampling settings."""
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
    stream: Optional[object] = None  # its TextStream, given when it takes a slot
    shown_tokens: int = 0  # tokens its stream has turned into text (the host's part lags a step)
    filled: int = 0          # prompt tokens in the cache
    slot: int = -1
    seed: int = 0            # of the request's random streams (settings.seed, else a fresh one)
    looked_up: bool = False  # its prompt's blocks were looked for in the prefix cache
    # the API's moderation gate (the event loop's; the engine never reads them)
    gated: list = dataclasses.field(default_factory=list)  # text pieces the gate passed
    shown: Optional[str] = None  # the text shown when the gate cut the choice

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

    @property
    def live(self) -> bool:
        """Neither cancelled nor finished."""
        return not self.cancelled and self.finish_reason is None


class PrefixBlocks:
    """Which store block holds the cache entries of a prompt prefix (a whole number of chunks, keyed
    by its exact tokens), least recently used first out when the store is full."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.blocks: collections.OrderedDict[tuple, int] = collections.OrderedDict()

    def find(self, prefix) -> Optional[int]:
        """The block holding `prefix`, now the most recently used, or None."""
        block = self.blocks.get(key := tuple(prefix))
        if block is not None:
            self.blocks.move_to_end(key)
        return block

    def place(self, prefix) -> Optional[int]:
        """The block to write `prefix` into (a free one, else the least recently used one's), or None
        when it is held already (then now the most recently used)."""
        if self.find(prefix) is not None:
            return None
        full = len(self.blocks) >= self.capacity
        block = self.blocks.popitem(last=False)[1] if full else len(self.blocks)
        self.blocks[tuple(prefix)] = block
        return block


class Scheduler:
    """Slots, the waiting queue and each step's plan. `submit` and `cancel` come from the server's
    threads; the rest from the engine's thread."""

    def __init__(self, max_batch: int, chunk: int, step_tokens: int, max_queue: int):
        self.max_batch, self.chunk, self.step_tokens, self.max_queue = max_batch, chunk, step_tokens, max_queue
        # prompt chunks one step may prefill together: a power of two within the budget and the slots
        self.max_prefill = below(max(1, min(max_batch, step_tokens // chunk)))
        self.slots: list[Optional[Sequence]] = [None] * max_batch
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False

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

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    def wait_for_work(self, new_stream: Callable[[Sequence], object]) -> bool:
        """Block until there is work (False: stopping), then admit waiting sequences into free slots,
        each given its text stream (a cancelled one is dropped, not given a slot)."""
        with self.cond:
            while not self.stopping and not self.waiting and not any(self.slots):
                self.cond.wait()
            if self.stopping:
                return False
            for i in range(self.max_batch):
                while self.slots[i] is None and self.waiting:
                    seq = self.waiting.popleft()
                    if not seq.cancelled:
                        seq.slot, seq.filled, seq.stream = i, 0, new_stream(seq)
                        self.slots[i] = seq
            return True

    def running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def release(self, seq: Sequence) -> None:
        """seq leaves its slot (finished or cancelled)."""
        if 0 <= seq.slot < self.max_batch and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None

    def drop_cancelled(self) -> None:
        for seq in self.running():
            if seq.cancelled:
                self.release(seq)

    def unseen(self) -> list[Sequence]:
        """Sequences admitted since the last step (their prompts not yet looked up in the prefix blocks)."""
        return [s for s in self.running() if s.prefilling and not s.looked_up]

    def prefill_batch(self) -> list[Sequence]:
        """This step's prompt chunks: within the token budget (what the decoding slots leave of it; at
        least one chunk, so prompts always advance); a prompt scored position by position for echo
        logprobs goes alone."""
        filling = [s for s in self.running() if s.prefilling and s.finish_reason is None]
        generating = sum(s.decoding for s in self.running())
        room = min(self.max_prefill, max(1, (self.step_tokens - generating) // self.chunk))
        scored = [s for s in filling if s.echo_logprobs][:1]
        return scored or [s for s in filling if not s.echo_logprobs][:room]

    def decoding(self) -> list[Sequence]:
        """The slots generating now (after this step's prompt chunks)."""
        return [s for s in self.running() if s.decoding]

    def drain(self) -> list[Sequence]:
        """Every waiting and running sequence, taken out (at shutdown)."""
        with self.cond:
            out = list(self.waiting) + self.running()
            self.waiting.clear()
            return out

    def load(self) -> dict:
        with self.cond:
            return {"running": len(self.running()), "waiting": len(self.waiting), "slots": self.max_batch}
