"""Shape buckets: every program is compiled for a few sizes (powers of two), never per request."""
from __future__ import annotations

from typing import Optional


def bucket(n: int, smallest: int = 1, largest: Optional[int] = None) -> int:
    """The power of two >= n (at least `smallest`), capped at `largest`."""
    size = max(smallest, 1 << max(n - 1, 0).bit_length())
    return size if largest is None else min(size, largest)


def below(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (n.bit_length() - 1)


def sizes(largest: int) -> list[int]:
    """Every bucket of rows up to `largest`: 1, 2, 4, ... and `largest` itself (what a warm-up
    compiles; bucket(n, largest=largest) is always one of them)."""
    out = [1 << i for i in range(largest.bit_length())]
    return out if out[-1] == largest else out + [largest]
