"""A multi-host server: process 0's engine steps, replayed in order by every other process.

A program sharded over several hosts runs only when every process calls it, in the same order, with
the same host inputs. Process 0 alone listens for requests and schedules them; before each program
call its engine posts the call (a method name and host values: token ids, slots, positions,
sampling settings) under a running number in the coordination service's key-value store, which
`jax.distributed` already runs. Every other process reads the calls in that order and makes each
one, so its shards of the params, KV cache and prefix store stay in step. The store is the job's own
(started by process 0 for `jax.distributed`), so its messages are trusted like the job's code.
"""
from __future__ import annotations

import itertools
import pickle

from neojax import sharding

PREFIX = "neojax/serve/"
KEEP = 256      # posted calls kept in the store: the followers are at most a few calls behind (lockstep)
WAIT_MS = 60_000  # a follower's wait for the next call, renewed for as long as the server is idle
STOP = "stop"
_RELAYS = itertools.count()  # one per engine a process builds, numbered alike on every process


class Relay:
    """Numbered messages from process 0 to the others, through the coordination service."""

    def __init__(self):
        self.client, self.count = sharding.coordination_client(), 0
        self.prefix = f"{PREFIX}{next(_RELAYS)}/"

    def post(self, message) -> None:
        """Process 0: the next message (picklable host values)."""
        self.client.key_value_set_bytes(f"{self.prefix}{self.count}", pickle.dumps(message))
        if self.count >= KEEP:
            self.client.key_value_delete(f"{self.prefix}{self.count - KEEP}")
        self.count += 1

    def receive(self):
        """Any other process: the next message, waiting for it as long as it takes."""
        while True:
            try:
                data = self.client.blocking_key_value_get_bytes(f"{self.prefix}{self.count}", WAIT_MS)
            except Exception as e:  # an idle server posts nothing: wait again (a lost process 0 ends
                if "DEADLINE_EXCEEDED" not in str(e):  # this one through the peer watch)
                    raise
                continue
            self.count += 1
            return pickle.loads(data)
