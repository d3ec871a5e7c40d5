"""The engine without HTTP: sequences of different lengths arriving together decode exactly as
`generate` does, also with int8 weights and an int8 KV cache."""
import functools
import threading

import jax
import numpy as np
import pytest
from support import engine_of, run_engine, served

from neojax.generate import generate
from neojax.infer.sampling import Sampling
from neojax.model.quant import quantize_params
from neojax.serve.scheduler import Sequence, Settings

# three prompts of different lengths (the last spans several chunks of 8) for two slots
TEXTS = ("The quick brown fox", "Once", "def hello():\n    print('hi')\n" * 3)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "int8 weights", "int8 kv cache"])
def test_engine_matches_generate(tiny, variant):
    params, config = tiny.params, tiny.config
    if variant == "int8 weights":
        params = quantize_params(params)
    if variant == "int8 kv cache":
        config = config.replace(kv_cache="int8")
    prompts = [tiny.tokenizer.encode(t) for t in TEXTS]
    got = served(engine_of(params, config, tiny.tokenizer, max_batch=2, chunk=8), prompts, 12)  # 3 share 2 slots
    want = [generate(params, config, [p], tiny.tokenizer, max_new_tokens=12).tokens[0] for p in prompts]
    assert got == want


def test_host_params_are_put_on_the_device_once(tiny):
    """numpy params (a converted or built model) would otherwise be copied in by every step: at
    the 125M shape 500 MB a step, a quarter of the decode rate on a CPU."""
    host = jax.tree.map(np.array, tiny.params)
    engine = engine_of(host, tiny.config, tiny.tokenizer, max_batch=1, chunk=8, draft=(host, tiny.config))
    leaves = jax.tree.leaves((engine.runner.params, engine.runner.draft_params))
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


POISON = 666  # the seed of the sequence whose steps fail


def _poisoned(program):
    """`program`, failing whenever a row it runs carries the POISON seed (as a bad input might)."""
    def run(*args, **kwargs):
        sampling = next(a for a in args if isinstance(a, Sampling))
        if POISON in np.asarray(sampling.seeds).tolist():
            raise FloatingPointError("injected failure")
        return program(*args, **kwargs)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("where", ["decode", "prefill", "listener"])
def test_a_failing_sequence_ends_alone_and_the_others_finish(tiny, where):
    """One sequence's failing step ends that sequence with "error" (a failing listener: cancelled);
    the sequences sharing its steps finish with the text they would have had without it."""
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=4, chunk=8)
    engine.warm_up()
    if where == "decode":
        engine.runner._decode = _poisoned(engine.runner._decode)
    elif where == "prefill":
        engine.runner._prefill = _poisoned(engine.runner._prefill)
    engine.start()
    prompts = [tiny.tokenizer.encode(t) for t in ("The quick brown fox", "Once", "def hello():\n", "A B C")]
    done = threading.Event()
    seqs = []

    def on_event(event, index):
        if where == "listener" and index == 1 and "text" in event:
            raise ValueError("a listener that fails")
        if "finish_reason" in event and all(s.finish_reason or s.cancelled for s in seqs):
            done.set()
    seqs += [Sequence(p, Settings(max_tokens=12, temperature=0.0), functools.partial(on_event, index=i))
             for i, p in enumerate(prompts)]
    seqs[1].seed = POISON  # its random stream (greedy here: only the marker)
    try:
        engine.submit(seqs)
        assert done.wait(120)
        assert engine.busy()["running"] == 0 and engine.thread.is_alive()
    finally:
        engine.shutdown()
    if where == "listener":  # its request is taken to be gone: cancelled, its slot freed
        assert seqs[1].cancelled and seqs[1].finish_reason is None
    else:
        assert seqs[1].finish_reason == "error"
    for i in (0, 2, 3):
        want = generate(tiny.params, tiny.config, [prompts[i]], tiny.tokenizer, max_new_tokens=12).tokens[0]
        assert seqs[i].tokens == want and seqs[i].finish_reason in ("length", "stop")


@pytest.mark.slow
def test_a_failure_that_loses_the_cache_ends_the_running_and_serves_the_next(tiny):
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=2, chunk=8)
    engine.warm_up()
    decode, failed = engine.runner._decode, []

    def lose_cache(params, transposed, cache, *args):
        if not failed:  # the first decode step fails after its buffers were donated
            failed.append(True)
            for leaf in jax.tree.leaves(cache):
                leaf.delete()
            raise RuntimeError("injected failure after donation")
        return decode(params, transposed, cache, *args)
    engine.runner._decode = lose_cache
    engine.start()
    prompt = tiny.tokenizer.encode("The quick brown fox")
    try:
        first = run_engine(engine, [prompt], 8)
        again = run_engine(engine, [prompt], 8)
    finally:
        engine.shutdown()
    want = generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=8).tokens[0]
    assert first == [want[:1]]  # the prefill's token, then the failed decode step ended it
    assert again == [want]


@pytest.mark.slow
def test_prompts_arriving_together_are_prefilled_together_and_decode_as_generate(tiny):
    """Batched prefill: one program takes several prompts' chunks (rows padded to a power of two);
    each sequence's tokens equal generate's, and a prompt scored for echo logprobs goes alone."""
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=4, chunk=8, step_tokens=24)
    assert engine.scheduler.max_prefill == 2  # 24 tokens a step hold three chunks of 8: two rows (a power of two)
    engine.warm_up()
    rows_seen = []
    program = engine.runner._prefill

    def spy(params, draft, cache, tokens, *args, **kwargs):
        rows_seen.append((tokens.shape[0], len(set(np.asarray(args[0]).tolist()))))  # rows, distinct slots
        return program(params, draft, cache, tokens, *args, **kwargs)
    engine.runner._prefill = spy
    engine.start()
    texts = ("The quick brown fox jumps over the lazy dog", "Once upon a time there was", "def hello():\n" * 3, "A")
    prompts = [tiny.tokenizer.encode(t) for t in texts]
    try:
        got = run_engine(engine, prompts, 10)
    finally:
        engine.shutdown()
    want = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=10).tokens[0] for p in prompts]
    assert got == want
    assert (2, 2) in rows_seen and all(rows in (1, 2) for rows, _ in rows_seen)
    assert len(rows_seen) < sum(-(-len(p) // 8) for p in prompts)  # fewer programs than chunks


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache", ["auto", "int8"])
def test_a_repeated_prefix_is_not_prefilled_again_and_output_is_unchanged(tiny, kv_cache):
    """Prefix reuse: prompts sharing a system prompt of several chunks prefill it once, and every
    sequence's tokens are those with reuse off (and generate's: with an int8 cache the engine's
    chunked prefill reads earlier chunks from int8, which generate's one-pass prefill does not)."""
    config = tiny.config.replace(kv_cache=kv_cache)
    system = tiny.tokenizer.encode("You are a helpful assistant who answers briefly and kindly. " * 2)
    assert len(system) >= 24
    prompts = [system + tiny.tokenizer.encode(q) for q in (" What is two plus two?", " Name a colour.", " Hi")]
    outputs, starts = {}, {}
    for budget in (0, 1):
        engine = engine_of(tiny.params, config, tiny.tokenizer, max_batch=2, chunk=8, prefix_cache_mb=budget)
        engine.warm_up()
        chunks = []
        program = engine.runner._prefill

        def spy(params, draft, cache, tokens, rows, steps, *args, program=program, chunks=chunks, **kwargs):
            chunks.append(np.asarray(steps).tolist())
            return program(params, draft, cache, tokens, rows, steps, *args, **kwargs)
        engine.runner._prefill = spy
        engine.start()
        try:
            first = run_engine(engine, prompts[:1], 6)
            alone = len(chunks)
            outputs[budget] = first + run_engine(engine, prompts[1:], 6)
        finally:
            engine.shutdown()
        starts[budget] = chunks[alone:]
    assert outputs[1] == outputs[0]
    if kv_cache == "auto":
        assert outputs[1] == [generate(tiny.params, config, [p], tiny.tokenizer, max_new_tokens=6).tokens[0]
                              for p in prompts]
    shared = (len(system) // 8) * 8
    assert engine.runner.reused_tokens == 2 * shared  # the later two restored every whole block of the system prompt
    assert all(start >= shared for step in starts[1] for start in step)  # and prefilled none of it
    assert any(start < shared for step in starts[0] for start in step)  # which, without reuse, they did
    assert 0 < len(engine.runner.prefixes.blocks) <= engine.runner.prefixes.capacity


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["tensor=4", "tensor=2", "data=2,tensor=2"])
def test_a_sharded_engine_decodes_as_generate_and_compiles_nothing_after_warm_up(tiny, mesh):
    """Params, the slot cache and the prefix store split by head (sharding.place): the same tokens,
    the caches stay in their shards, and no request compiles a program."""
    from neojax import sharding
    devices = jax.devices()[:int(np.prod([int(part.split("=")[1]) for part in mesh.split(",")]))]
    params = sharding.place(tiny.params, tiny.config, sharding.make_mesh(mesh, devices))
    prompts = [tiny.tokenizer.encode(t) for t in TEXTS]
    want = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=12).tokens[0] for p in prompts]
    traced = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: traced.append(event) if event.endswith("jaxpr_trace_duration") else None)
    engine = engine_of(params, tiny.config, tiny.tokenizer, max_batch=2, chunk=8, prefix_cache_mb=1)
    engine.warm_up()
    engine.start()
    before = len(traced)
    try:
        got = run_engine(engine, prompts, 12)
        again = run_engine(engine, prompts[2:], 12)  # its first chunks come from the prefix store
    finally:
        engine.shutdown()
    assert got == want and again == want[2:]
    assert engine.runner.reused_tokens > 0 and len(traced) == before
    heads = engine.runner.cache[0]["k"].sharding.spec
    assert tuple(heads)[:2] == (None, "tensor") and len(engine.runner.cache[0]["k"].sharding.device_set) == len(devices)


@pytest.mark.slow
def test_text_is_made_while_the_next_step_runs(tiny):
    """Overlap: a token's text (detokenising, stop strings, streaming) comes after the step that
    computes the next token is dispatched; the tokens and text are those of running it in lockstep."""
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=2, chunk=8)
    engine.warm_up()
    log = []
    decode = engine.runner._decode

    def dispatch(*args, **kwargs):
        log.append("step")
        return decode(*args, **kwargs)
    engine.runner._decode = dispatch
    prompt = tiny.tokenizer.encode("The quick brown fox")
    want = generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=8)
    stop = want.texts[0][3:5]
    want = generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=8, stop_strings=[stop])
    done = threading.Event()
    seq = Sequence(prompt, Settings(max_tokens=8, temperature=0.0, stop=(stop,)),
                   lambda event: (log.append(event), done.set() if "finish_reason" in event else None))
    engine.start()
    try:
        engine.submit([seq])
        assert done.wait(60)
    finally:
        engine.shutdown()
    texts = [(i, e) for i, e in enumerate(log) if isinstance(e, dict) and "text" in e]
    assert texts and all(log[:i].count("step") >= e["tokens"] for i, e in texts)  # after the next step's dispatch
    assert seq.tokens == want.tokens[0] and "".join(e["text"] for _, e in texts) == want.texts[0]
    assert seq.finish_reason == "stop"


@pytest.mark.skipif(jax.default_backend() == "cpu", reason="compares an accelerator with the CPU")
def test_greedy_tokens_on_the_accelerator_are_the_cpus(tiny):
    """generate, generate on a mesh and the engine on the accelerator give the CPU's greedy tokens
    (float32 at full matmul precision: the code paths are compared, not TF32 rounding).
    scripts/gpu_session.sh runs it on a lent GPU."""
    from neojax import sharding
    prompts = [tiny.tokenizer.encode(t) for t in TEXTS]
    one_by_one = lambda params: [generate(params, tiny.config, [p], tiny.tokenizer, max_new_tokens=32).tokens[0]
                                 for p in prompts]
    with jax.default_matmul_precision("highest"):
        with jax.default_device(jax.devices("cpu")[0]):
            cpu = one_by_one(tiny.params)
        accelerator = one_by_one(tiny.params)
        placed = sharding.place(tiny.params, tiny.config, sharding.make_mesh(f"data={jax.device_count()}",
                                                                             jax.devices()))
        on_mesh = generate(placed, tiny.config, prompts, tiny.tokenizer, max_new_tokens=32).tokens
        from_engine = served(engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=2, chunk=8), prompts, 32)
    assert accelerator == cpu and on_mesh == cpu and from_engine == cpu
