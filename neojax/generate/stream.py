"""Text as tokens arrive: held back while it may begin a stop string or a UTF-8 character, cut
before a stop string. `generate` streams with it (a TextWatcher per call), and so does every
request the serving engine runs (a TextStream per choice).
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

# The host side (streaming, stop strings) of each generate call running now, by call number: a
# compiled loop's callback is the same function for every call, so the number picks the handler.
WATCHERS: dict[int, Callable] = {}
CALLS = itertools.count()


def cut(text: str, stop_strings: Sequence[str]) -> str:
    """text up to the first stop string in it."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[:min(cuts)] if cuts else text


class TextStream:
    """One row's text as its tokens arrive. `add(token)` returns (new visible text, stopped): text is
    held back while it may be the start of a stop string or an incomplete UTF-8 character, and a
    stop string ends the row with the text cut before it. `text` is what has been shown."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer, self.stop_strings = tokenizer, [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.text = ""

    def add(self, token: int) -> tuple[str, bool]:
        self.ids.append(int(token))
        full = self.tokenizer.decode(self.ids)
        visible = cut(full, self.stop_strings)
        if len(visible) < len(full):
            return self._show(visible), True
        if full.endswith("\ufffd"):
            return "", False  # an incomplete UTF-8 sequence: wait for the next byte token
        return self._show(visible[:len(visible) - self._held(visible)]), False

    def flush(self) -> str:
        """The text held back, once the row has ended."""
        return self._show(cut(self.tokenizer.decode(self.ids), self.stop_strings))

    def _held(self, text: str) -> int:
        """Characters at the end of `text` that may be the start of a stop string: not shown yet."""
        return max((k for s in self.stop_strings for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)

    def _show(self, visible: str) -> str:
        new = visible[len(self.text):]
        self.text = max(self.text, visible, key=len)
        return new


class TextWatcher:
    """Host side of the loop: streams each row's new text and ends rows that produced a stop string."""

    def __init__(self, tokenizer, batch, stop_strings, on_text, stop_tokens):
        self.rows = [TextStream(tokenizer, stop_strings) for _ in range(batch)]
        self.on_text, self.stop_tokens = on_text, stop_tokens

    def __call__(self, tokens, step, done):
        stop = np.zeros(len(tokens), bool)
        for row, token in enumerate(tokens):
            if done[row] or int(token) in self.stop_tokens:
                continue
            piece, stop[row] = self.rows[row].add(token)
            if piece and self.on_text:
                self.on_text(row, piece)
        return stop

    def flush(self):
        for row, stream in enumerate(self.rows):
            piece = stream.flush()
            if piece and self.on_text:
                self.on_text(row, piece)
