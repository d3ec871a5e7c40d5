"""The engine without HTTP: sequences of different lengths arriving together decode exactly as
`generate` does, also with int8 weights and an int8 KV cache."""
import threading

import pytest

from neojax.generate import generate
from neojax.model.quant import quantize_params
from neojax.serve.engine import Engine, Sequence, Settings


def _run(engine, prompts, max_tokens):
    done = threading.Event()
    seqs = []

    def on_event(event):
        if "finish_reason" in event and all(s.finish_reason for s in seqs):
            done.set()
    seqs += [Sequence(p, Settings(max_tokens=max_tokens, temperature=0.0), on_event) for p in prompts]
    engine.submit(seqs)
    assert done.wait(120)
    return [s.tokens for s in seqs]


@pytest.mark.parametrize("variant", ["float32", "int8 weights", "int8 kv cache"])
def test_engine_matches_generate(tiny, variant):
    params, config = tiny.params, tiny.config
    if variant == "int8 weights":
        params = quantize_params(params)
    if variant == "int8 kv cache":
        config = config.replace(kv_cache="int8")
    prompts = [tiny.tokenizer.encode(t) for t in ("The quick brown fox", "Once", "def hello():\n    print('hi')\n" * 3)]
    engine = Engine(params, config, tiny.tokenizer, max_batch=2, chunk=8)  # 3 sequences share 2 slots
    engine.warm_up()
    engine.start()
    try:
        got = _run(engine, prompts, 12)
    finally:
        engine.shutdown()
    want = [generate(params, config, [p], tiny.tokenizer, max_new_tokens=12).tokens[0] for p in prompts]
    assert got == want
