"""What a forward pass does with the decoding cache: one small typed value that `GPTNeo` passes
down to the attention variant, instead of a mode inferred from which arguments are None.

    Full(train)          training and scoring: attend over the input; no cache (dropout if train)
    Prefill(length)      attend over a prompt and start a cache with room for `length` slots
    Decode(slot)         one new token per row at cache `slot` (a left-padded batch shares slots)
    Extend(starts, rows) serving: row b's new tokens at its own slots starts[b].. (rows independent);
                         with `rows`, query row p is cache row rows[p] of a cache of many requests

They are pytrees: traced fields (slot, starts, rows) are leaves, the rest static, so a mode passes
through `nn.remat` and `jax.jit` like any argument.
"""
from __future__ import annotations

from typing import Optional, Union

import jax
from flax import struct


@struct.dataclass
class Full:
    train: bool = struct.field(pytree_node=False, default=False)


@struct.dataclass
class Prefill:
    length: int = struct.field(pytree_node=False)
    train = False


@struct.dataclass
class Decode:
    slot: jax.Array
    train = False


@struct.dataclass
class Extend:
    starts: jax.Array
    rows: Optional[jax.Array] = None
    train = False


Mode = Union[Full, Prefill, Decode, Extend]
