"""The engine's scheduler on its own (no jax): admission into slots, the queue's bound, each step's
prompt chunks within the token budget, cancellation, and the prefix blocks' LRU."""
import ast
import subprocess
import sys

import pytest

import neojax.serve.scheduler as module
from neojax.serve.scheduler import PrefixBlocks, QueueFull, Scheduler, Sequence, Settings


def _seqs(*lengths, **kwargs):
    return [Sequence(list(range(1, n + 1)), Settings(max_tokens=4), lambda event: None, **kwargs) for n in lengths]


def test_the_scheduler_imports_no_jax():
    """Its own imports, and what importing it loads in a fresh interpreter."""
    tree = ast.parse(open(module.__file__).read())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.split(".")[0] in ("jax", "flax", "numpy") for name in names), names
    assert {"neojax.infer.buckets"} >= {n for n in names if n.startswith("neojax")}
    loaded = subprocess.run([sys.executable, "-c", "import sys, neojax.serve.scheduler; print('jax' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"


def test_admission_fills_free_slots_in_order_and_the_queue_is_bounded():
    s = Scheduler(max_batch=2, chunk=8, step_tokens=64, max_queue=3)
    seqs = _seqs(5, 9, 3)
    s.submit(seqs)
    with pytest.raises(QueueFull, match="3 requests are waiting"):
        s.submit(_seqs(1))
    assert s.wait_for_work(lambda seq: f"stream {seq.prompt[-1]}")
    assert s.slots == seqs[:2] and list(s.waiting) == seqs[2:]
    assert [q.slot for q in seqs[:2]] == [0, 1] and seqs[1].stream == "stream 9"
    s.release(seqs[0])
    s.cancel([seqs[2]])  # cancelled while waiting: never given a slot
    s.submit(more := _seqs(4))
    assert s.wait_for_work(str) and s.slots == [more[0], seqs[1]]


def test_a_step_prefills_within_its_budget_and_a_scored_prompt_alone():
    s = Scheduler(max_batch=8, chunk=8, step_tokens=17, max_queue=16)
    assert s.max_prefill == 2  # two chunks fit 17 tokens (a power of two of them)
    seqs = _seqs(20, 20, 20, 1)
    s.submit(seqs)
    s.wait_for_work(str)
    assert s.prefill_batch() == seqs[:2]
    seqs[3].filled, seqs[3].tokens = 1, [7]  # decoding now: one token of the budget, two chunks still fit
    assert s.decoding() == [seqs[3]] and s.prefill_batch() == seqs[:2]
    seqs[0].filled, seqs[0].tokens = 20, [7]  # two decoding: one chunk left
    assert s.decoding() == [seqs[0], seqs[3]] and s.prefill_batch() == seqs[1:2]
    echo = _seqs(9, echo_logprobs=True)
    s.submit(echo)
    s.wait_for_work(str)
    assert s.prefill_batch() == echo  # scored position by position: alone


def test_cancelled_sequences_leave_their_slots_and_drain_takes_everything():
    s = Scheduler(max_batch=2, chunk=8, step_tokens=64, max_queue=8)
    seqs = _seqs(3, 3, 3)
    s.submit(seqs)
    s.wait_for_work(str)
    s.cancel([seqs[0]])
    s.drop_cancelled()
    assert s.slots == [None, seqs[1]] and s.load() == {"running": 1, "waiting": 1, "slots": 2}
    assert s.drain() == [seqs[2], seqs[1]] and not s.waiting
    s.stop()
    assert not s.wait_for_work(str)
    with pytest.raises(QueueFull, match="shutting down"):
        s.submit(_seqs(1))


def test_prefix_blocks_evict_the_least_recently_used():
    blocks = PrefixBlocks(2)
    assert blocks.place((1, 2)) == 0 and blocks.place((3, 4)) == 1
    assert blocks.place((1, 2)) is None  # held already: now the most recent
    assert blocks.find([9]) is None
    assert blocks.place((5, 6)) == 1  # (3, 4) was the least recently used: its block is reused
    assert blocks.find((3, 4)) is None and blocks.find((1, 2)) == 0
    assert blocks.place((7,)) == 1 and set(blocks.blocks) == {(1, 2), (7,)}
