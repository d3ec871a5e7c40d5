"""Scoring requests exactly as EleutherAI's lm-evaluation-harness defines them, batched.

loglikelihood(context, continuation): trailing spaces of the context move to the continuation;
context+continuation are encoded together and split at the context's token count; an empty
context becomes EOS; the model sees the last (max_len + 1) tokens minus the final one. Rolling
loglikelihood scores every token of a text once in windows of max_len, the first prefixed by EOS.

Requests are sorted by length and run in right-padded batches whose lengths (and row counts,
powers of two up to batch_size) come from small sets of buckets: a bounded number of compiled
shapes, and no score depends on batching.
"""
from __future__ import annotations

import functools
import sys
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from neojax import sharding
from neojax.cli import Progress
from neojax.generate import decode_weights, generate
from neojax.infer.buckets import bucket
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo

MIN_WIDTH = 64  # the narrowest scoring program (widths are powers of two up to the context)


@functools.lru_cache(maxsize=4)
def _scorer(config: GPTNeoConfig, mesh=None):
    """The compiled scoring program; on a mesh, rows split over the data axes and the scores
    gathered whole on every process."""
    def score(params, tokens):
        """Per position t: log p(tokens[t+1] | tokens[:t+1]) and whether it is the argmax."""
        logits = GPTNeo(config).apply({"params": params}, tokens[:, :-1])
        targets = tokens[:, 1:]
        target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        ll = target_logit - jax.nn.logsumexp(logits, axis=-1)
        return ll, jnp.argmax(logits, axis=-1) == targets
    if mesh is None:
        single = jax.jit(score)
        return lambda params, tokens: single(params, jnp.asarray(tokens))
    program = jax.jit(score, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def run(params, tokens):
        with sharding.using_mesh(mesh):
            return program(params, sharding.put_global(tokens, mesh, sharding.batch_spec()))
    return run


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [tokenizer.eos_id], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    return whole[:n_context], whole[n_context:]


def rolling_windows(tokens: list[int], prefix: int, max_len: int, context_len: int = 1):
    """(context, continuation) token windows covering `tokens` once (the harness's rolling windows,
    made disjoint). context_len = 1 conditions each later window on max_len - 1 earlier tokens."""
    if not tokens:
        return
    pred_len = max_len - context_len + 1
    first = min(max_len, len(tokens))
    windows = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        windows.append((tokens[max(end - max_len - 1, 0):end - 1], tokens[end - n:end]))
        predicted += n
    for context, continuation in windows:  # disjoint: the context stops where the continuation starts
        yield context[:len(context) - (len(continuation) - 1)], continuation


class Scorer:
    """Runs (context tokens, continuation tokens) requests through the model in batches."""

    def __init__(self, params, config: GPTNeoConfig, tokenizer, batch_size: int = 8, max_len: Optional[int] = None,
                 label: str = "scoring", max_gen_toks: Optional[int] = None):
        params = sharding.on_device(params)  # not copied in again by every batch
        self.params, self.config, self.tokenizer, self.batch_size = params, config, tokenizer, batch_size
        self.max_len = max_len or config.max_position_embeddings
        self.max_gen_toks = max_gen_toks  # the user's, in place of each task's own
        self._budget_said = False
        self.mesh = sharding.mesh_of(params)  # placed params (sharding.place): rows split over its data axes
        self.split = sharding.data_parallel(self.mesh) if self.mesh is not None else 1
        self.score = _scorer(config, self.mesh)
        self.tokens_scored = self.tokens_generated = 0
        self.truncated = 0  # log-likelihood requests whose context (or continuation) lost tokens to max_len
        self.label = label

    def _bucket(self, n: int) -> int:
        return bucket(n, MIN_WIDTH, self.max_len + 1)

    def loglikelihood_tokens(self, requests: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        results: list = [None] * len(requests)
        inputs = []
        for i, (context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError(f"request {i} has an empty continuation")
            whole = (list(context) + list(continuation))[-(self.max_len + 1):]
            self.truncated += len(whole) < len(context) + len(continuation)
            inputs.append((i, whole, min(len(continuation), len(whole) - 1)))
        inputs.sort(key=lambda r: -len(r[1]))  # longest first: similar lengths share a batch
        progress = Progress(self.label, len(inputs), show=sharding.is_lead_process())
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            width = self._bucket(max(len(w) for _, w, _ in chunk))
            rows = bucket(len(chunk), largest=self.batch_size)  # few shapes, little padding
            rows = -(-rows // self.split) * self.split  # every data-parallel device gets as many rows
            tokens = np.zeros((rows, width), np.int32)
            for row, (_, whole, _) in enumerate(chunk):
                tokens[row, :len(whole)] = whole
            ll, greedy = jax.device_get(self.score(self.params, tokens))
            for row, (i, whole, n_cont) in enumerate(chunk):
                span = slice(len(whole) - 1 - n_cont, len(whole) - 1)
                results[i] = (float(ll[row, span].sum()), bool(greedy[row, span].all()))
                self.tokens_scored += len(whole)
            progress.update(len(chunk))
        return results

    def generate_until(self, requests: Sequence[tuple[str, Sequence[str], int]], temperature: float = 0.0,
                       top_p: float = 1.0, seed: int = 0, numbers: Optional[Sequence[int]] = None) -> list[str]:
        """Continuations of (context, until, max_gen_toks) requests, as the harness's generate_until:
        the context keeps its last max_len - max_gen_toks tokens; a row stops at EOS, at any `until`
        string or after max_gen_toks tokens, and its text is cut before the first stop string.
        Greedy, or sampled at `temperature` and `top_p` with `seed`, request i drawing as the number
        `numbers[i]` (default i) whatever batch it shares. Batched by length (left-padded buckets in
        neojax.generate)."""
        requests = [(context, until, self._budget(max_gen_toks)) for context, until, max_gen_toks in requests]
        numbers = list(range(len(requests))) if numbers is None else list(numbers)
        encoded = [self.tokenizer.encode(context)[-(self.max_len - max_gen_toks):] or [self.tokenizer.eos_id]
                   for context, _, max_gen_toks in requests]
        order = sorted(range(len(requests)), key=lambda i: (tuple(requests[i][1]), requests[i][2], -len(encoded[i])))
        results: list = [None] * len(requests)
        progress = Progress(self.label, len(requests), show=sharding.is_lead_process())
        weights = decode_weights(self.params, self.config)  # once for every batch of the task
        while order:
            first = order[0]
            same = lambda i: (tuple(requests[i][1]), requests[i][2]) == (tuple(requests[first][1]), requests[first][2])
            chunk = [i for i in order[:self.batch_size] if same(i)]
            order = order[len(chunk):]
            out = generate(self.params, self.config, [encoded[i] for i in chunk], self.tokenizer,
                           max_new_tokens=requests[first][2], stop_strings=list(requests[first][1]), weights=weights,
                           temperature=temperature, top_p=top_p, seed=seed, numbers=[numbers[i] for i in chunk])
            for i, text, new in zip(chunk, out.texts, out.tokens):
                results[i] = text
                self.tokens_generated += len(new)
            progress.update(len(chunk))
        return results

    def _budget(self, task_default: int) -> int:
        """Tokens to generate: the user's max_gen_toks, else the task's if it leaves room for a
        context, else half the context (said once)."""
        if self.max_gen_toks is not None:
            if not 0 < self.max_gen_toks < self.max_len:
                raise ValueError(f"--max_gen_toks {self.max_gen_toks} must be in [1, {self.max_len}) (the context "
                                 "length)")
            return self.max_gen_toks
        if task_default < self.max_len:
            return task_default
        if not self._budget_said:
            self._budget_said = True
            print(f"{self.label}: the task generates up to {task_default} tokens, more than the {self.max_len}-token "
                  f"context holds; generating up to {self.max_len // 2} (set --max_gen_toks)", file=sys.stderr)
        return self.max_len // 2

    def loglikelihood(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.loglikelihood_tokens([encode_pair(self.tokenizer, c, x) for c, x in pairs])

    def loglikelihood_rolling(self, texts: Sequence[str], context_len: int = 1) -> list[float]:
        """Total log-likelihood of each text, every token scored once."""
        owners, requests = [], []
        for i, text in enumerate(texts):
            for window in rolling_windows(self.tokenizer.encode(text), self.tokenizer.eos_id, self.max_len,
                                          context_len):
                owners.append(i)
                requests.append(window)
        totals = [0.0] * len(texts)
        for owner, (ll, _) in zip(owners, self.loglikelihood_tokens(requests)):
            totals[owner] += ll
        return totals
