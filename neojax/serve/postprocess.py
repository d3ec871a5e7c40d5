"""The engine's host side after a step: a new token accepted or a sequence finished (EOS,
max_tokens, the context's end), its text made (detokenised, cut at stop strings) and handed to the
request's listener. Text is made while the device runs the next step (`stream_pending`)."""
from __future__ import annotations

import traceback

from neojax.infer.programs import Drawn
from neojax.serve.scheduler import Scheduler, Sequence


class Postprocess:
    def __init__(self, tokenizer, max_len: int, scheduler: Scheduler):
        self.tokenizer, self.max_len, self.scheduler = tokenizer, max_len, scheduler

    def accept(self, seq: Sequence, drawn: Drawn, index) -> None:
        """drawn's token at `index` (on the host) is seq's next: stop at EOS, max_tokens or the end of
        the context. Its text (and a stop string in it) comes with the next step (stream_pending)."""
        token = int(drawn.token[index])
        if token == self.tokenizer.eos_id:
            return self.finish(seq, "stop")
        seq.tokens.append(token)
        seq.logprobs.append(float(drawn.scores.logprob[index]))
        seq.top.append(list(zip(drawn.scores.top_ids[index].tolist(), drawn.scores.top_lp[index].tolist())))
        if len(seq.tokens) >= seq.settings.max_tokens or seq.length + 1 >= self.max_len:
            self.finish(seq, "length")

    def pending(self) -> list[Sequence]:
        """The running sequences with tokens whose text has not been made yet."""
        return [s for s in self.scheduler.running() if s.finish_reason is None and s.shown_tokens < len(s.tokens)]

    def stream(self, seq: Sequence) -> None:
        """seq's tokens not yet shown into its stream, each piece of text emitted; at a stop string the
        tokens after it are dropped and the sequence finishes."""
        if self._show(seq):
            self.finish(seq, "stop")

    def _show(self, seq: Sequence) -> bool:
        for j in range(seq.shown_tokens, len(seq.tokens)):
            text, stopped = seq.stream.add(seq.tokens[j])
            seq.shown_tokens = j + 1
            if text:
                emit(seq, {"text": text, "tokens": j + 1})
            if stopped:
                del seq.tokens[j + 1:], seq.logprobs[j + 1:], seq.top[j + 1:]
                return True
        return False

    def finish(self, seq: Sequence, reason: str) -> None:
        """seq ends with `reason` (its last text first) and leaves its slot. Never raises: a stream that
        fails here ends the sequence with "error"."""
        if seq.finish_reason is not None:
            return
        rest = ""
        try:
            if seq.stream is not None and reason != "error":
                reason = "stop" if self._show(seq) else reason
                rest = seq.stream.flush()
        except Exception:
            traceback.print_exc()
            rest, reason = "", "error"
        if rest:
            emit(seq, {"text": rest, "tokens": len(seq.tokens)})
        seq.finish_reason = reason
        self.scheduler.release(seq)
        emit(seq, {"finish_reason": reason})


def emit(seq: Sequence, event: dict) -> None:
    """Hand an event to the request; one whose listener is gone (closed loop) is dropped."""
    try:
        seq.on_event(event)
    except Exception:  # RuntimeError from a closed loop, or whatever a listener raises
        seq.cancelled = True
