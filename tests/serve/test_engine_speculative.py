"""Speculative decoding in the engine: greedy output is the target's own, token for token (a draft
that always agrees and one that mostly does not, 1 or 3 proposals, prompts sharing slots, stop
strings, max_tokens inside a round, the prefix store); sampled tokens are distributed as the
target's (chi-square against the exact marginals, float64); nothing compiles after warm-up."""
import threading

import jax
import numpy as np
import pytest
from support import assert_drawn_from_target, engine_of, peaky_target_and_draft, random_draft

from neojax.generate import generate
from neojax.serve.scheduler import Sequence, Settings

PROMPTS = ["The quick brown fox", "Once", "def hello():\n    print('hi')\n" * 3, "GPT-Neo generates"]


def run(engine, prompts, settings):
    """Every prompt through a started engine (one settings, or a list: one each); the finished sequences."""
    done = threading.Event()
    seqs = []

    def on_event(event):
        if "finish_reason" in event and all(s.finish_reason for s in seqs):
            done.set()
    each = settings if isinstance(settings, list) else [settings] * len(prompts)
    seqs += [Sequence(p, one, on_event) for p, one in zip(prompts, each)]
    engine.submit(seqs)
    assert done.wait(300)
    return seqs


def serving(params, config, tokenizer, **kwargs):
    engine = engine_of(params, config, tokenizer, **{"max_batch": 2, "chunk": 8, **kwargs})
    engine.warm_up()
    engine.start()
    return engine


@pytest.fixture(scope="module")
def without_a_draft(tiny):
    """The prompts' greedy tokens from `generate`, and the engine's sequences without a draft."""
    prompts = [tiny.tokenizer.encode(t) for t in PROMPTS]
    want = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=13) for p in prompts]
    plain = serving(tiny.params, tiny.config, tiny.tokenizer)
    try:
        return prompts, want, run(plain, prompts, Settings(max_tokens=13, temperature=0.0))
    finally:
        plain.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("which, k", [("the target itself", 3), ("a random model", 1)])  # each side once
def test_greedy_output_is_the_targets(tiny, without_a_draft, which, k):
    draft = (tiny.params, tiny.config) if which == "the target itself" else random_draft(tiny.config)
    prompts, want, scores = without_a_draft
    traced = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: traced.append(event) if event.endswith("jaxpr_trace_duration") else None)
    engine = serving(tiny.params, tiny.config, tiny.tokenizer, draft=draft, draft_tokens=k, prefix_cache_mb=1)
    before = len(traced)
    try:
        got = run(engine, prompts, Settings(max_tokens=13, temperature=0.0))  # 4 prompts, 2 slots
        again = run(engine, prompts[2:3], Settings(max_tokens=13, temperature=0.0))  # from the prefix store
    finally:
        engine.shutdown()
    assert [s.tokens for s in got] == [w.tokens[0] for w in want] and again[0].tokens == want[2].tokens[0]
    assert [s.finish_reason for s in got] == [s.finish_reason for s in scores]
    for s, p in zip(got, scores):  # each token's log-probability and top 5, as without a draft
        np.testing.assert_allclose(s.logprobs, p.logprobs, atol=1e-4)
        assert [[i for i, _ in top] for top in s.top] == [[i for i, _ in top] for top in p.top]
    assert engine.runner.reused_tokens > 0 and len(traced) == before  # nothing compiled after warm-up
    if which == "the target itself":
        assert engine.runner.kept == engine.runner.proposed > 0
    else:
        assert engine.runner.kept < 0.5 * engine.runner.proposed  # really checked, and mostly overruled


def test_stop_strings_and_max_tokens_inside_a_round(tiny):
    """A draft that always agrees makes rounds of 4 tokens: a stop string or max_tokens inside one
    ends the text there, as without a draft."""
    prompt = tiny.tokenizer.encode(PROMPTS[0])
    full = generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=20).texts[0]
    stop = full[5:7]
    engine = serving(tiny.params, tiny.config, tiny.tokenizer, draft=(tiny.params, tiny.config), draft_tokens=3)
    try:
        for settings, want in ((Settings(max_tokens=20, temperature=0.0, stop=(stop,)),
                                generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=20,
                                         stop_strings=[stop])),
                               (Settings(max_tokens=6, temperature=0.0),
                                generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=6))):
            texts = []
            seq = Sequence(prompt, settings, lambda e: texts.append(e.get("text", "")) or done.set()
                           if "finish_reason" in e else texts.append(e.get("text", "")))
            done = threading.Event()
            engine.submit([seq])
            assert done.wait(60)
            assert seq.tokens == want.tokens[0] and "".join(texts) == want.texts[0]
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_a_greedy_stream_beside_sampled_ones_is_the_targets(tiny):
    """A step with a sampled row takes the sampled rule for it and the greedy rule for the others
    (a step of greedy rows only skips the draws). A sampled stream is what `generate` with the same
    draft draws for that seed: one speculative round and one key derivation for both."""
    prompts = [tiny.tokenizer.encode(t) for t in PROMPTS[:3]]
    want = generate(tiny.params, tiny.config, [prompts[0]], tiny.tokenizer, max_new_tokens=10).tokens[0]
    draft = random_draft(tiny.config)
    engine = serving(tiny.params, tiny.config, tiny.tokenizer, max_batch=3, draft=draft, draft_tokens=3)
    greedy = Settings(max_tokens=10, temperature=0.0)
    try:
        alone = run(engine, prompts, greedy)
        mixed = run(engine, prompts, [greedy] + [Settings(max_tokens=10, temperature=1.0, seed=i) for i in (1, 2)])
    finally:
        engine.shutdown()
    assert alone[0].tokens == want and mixed[0].tokens == want
    assert [s.tokens for s in mixed[1:]] != [s.tokens for s in alone[1:]]  # the others really sampled
    drafted = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=10, temperature=1.0, seed=seed,
                        draft=draft, draft_tokens=3).tokens[0] for p, seed in zip(prompts[1:], (1, 2))]
    assert [s.tokens for s in mixed[1:]] == drafted
    assert engine.runner.kept < engine.runner.proposed  # the random draft was overruled


class Letters:
    """A tokenizer for a 12-token vocabulary: token i is the letter 'a' + i (no end-of-text id)."""
    eos_id = 99

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


@pytest.mark.slow
def test_sampled_tokens_are_distributed_as_the_targets():
    """2048 sequences sample 3 tokens after one prompt on a 12-token model with a draft that
    disagrees often: tokens 2 and 3 come from kept proposals or the residual draw. Their counts
    match the target's exact marginals (float64 softmax over every prefix) and not the draft's."""
    params, config, draft, prompt = peaky_target_and_draft()
    rows = 2048
    engine = engine_of(params, config, Letters(), max_batch=32, chunk=4, max_queue=rows, draft=draft, draft_tokens=2)
    engine.start()  # not warmed up: only the row counts this run meets compile (12 s, not 33)
    try:
        seqs = run(engine, [prompt] * rows, Settings(max_tokens=3, temperature=1.0))
    finally:
        engine.shutdown()
    tokens = np.array([s.tokens for s in seqs])
    assert tokens.shape == (rows, 3) and 0 < engine.runner.kept < 0.9 * engine.runner.proposed
    assert_drawn_from_target(tokens, params, config, draft, prompt)


@pytest.mark.slow
def test_a_sharded_engine_with_a_draft_decodes_as_generate(tiny):
    """Both models split by head over tensor=2 (sharding.place): the same tokens, both caches stay in
    their shards, nothing compiles after warm-up."""
    from neojax import sharding
    mesh = sharding.make_mesh("tensor=2", jax.devices()[:2])
    draft_params, draft_config = random_draft(tiny.config)
    prompts = [tiny.tokenizer.encode(t) for t in PROMPTS[:3]]
    want = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=12).tokens[0] for p in prompts]
    traced = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: traced.append(event) if event.endswith("jaxpr_trace_duration") else None)
    engine = serving(sharding.place(tiny.params, tiny.config, mesh), tiny.config, tiny.tokenizer,
                     draft=(sharding.place(draft_params, draft_config, mesh), draft_config), draft_tokens=2)
    before = len(traced)
    try:
        got = run(engine, prompts, Settings(max_tokens=12, temperature=0.0))
    finally:
        engine.shutdown()
    assert [s.tokens for s in got] == want and len(traced) == before
    assert all(tuple(layer["k"].sharding.spec)[:2] == (None, "tensor") for layer in engine.runner.cache)
    assert len(engine.runner.cache) == len(tiny.config.attention_layers) + len(draft_config.attention_layers)
