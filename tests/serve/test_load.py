"""A bounded load test: 32 concurrent streaming clients x 4 requests with mixed prompt lengths on a
4-slot server. Every request completes, every greedy output equals generate's, nothing compiles
after warm-up, and the server's memory does not grow between two rounds."""
import json
import threading

import httpx2 as httpx
import numpy as np
import pytest

from neojax.generate import generate

pytestmark = pytest.mark.slow  # a real server under load (the fast subset: -m 'not slow')

CLIENTS, REQUESTS = 32, 4


def _prompts(tiny, count=16):
    rng = np.random.default_rng(5)
    words = "the quick brown fox jumps over a lazy dog once upon time model text".split()
    return [" ".join(rng.choice(words, n)) for n in rng.integers(1, 60, count)]  # 1 to ~100 tokens


def _round(server, prompts, max_tokens):
    results, errors = {}, []

    def client(c):
        try:
            for r in range(REQUESTS):
                i = (c * REQUESTS + r) % len(prompts)
                text, finish = "", None
                with httpx.stream("POST", server.url + "/v1/completions", timeout=300, json={
                        "model": "tiny", "prompt": prompts[i], "max_tokens": max_tokens[i], "temperature": 0,
                        "stream": True}) as resp:
                    assert resp.status_code == 200, resp.read()
                    for line in resp.iter_lines():
                        if line.startswith("data: {"):

                            choice = json.loads(line[6:])["choices"][0]
                            text += choice["text"]
                            finish = choice["finish_reason"] or finish
                results[(c, r)] = (i, text, finish)
        except Exception as e:  # noqa: BLE001  (reported below with the client's number)
            errors.append((c, repr(e)))
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    return results


def test_concurrent_streams_complete_exactly_without_compiling_or_growing(server, tiny):
    prompts = _prompts(tiny)
    max_tokens = [4 + (i * 5) % 17 for i in range(len(prompts))]
    want = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=m).texts[0]
            for p, m in zip(prompts, max_tokens)]
    before = httpx.get(server.url + "/health").json()["compilations"]
    first = _round(server, prompts, max_tokens)
    rss_first = server.rss_kb()
    second = _round(server, prompts, max_tokens)
    rss_second = server.rss_kb()
    for results in (first, second):
        assert len(results) == CLIENTS * REQUESTS
        for i, text, finish in results.values():
            assert text == want[i] and finish in ("length", "stop")
    assert httpx.get(server.url + "/health").json()["compilations"] == before  # no request compiled anything
    assert rss_second - rss_first < max(0.05 * rss_first, 20_000), (rss_first, rss_second)  # KiB
    health = httpx.get(server.url + "/health").json()
    assert health["running"] == 0 and health["waiting"] == 0
