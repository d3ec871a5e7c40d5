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


def test_the_worst_requests_beside_16_innocent_streams_leave_them_intact(server, tiny):
    """Hostile and extreme requests run while 16 greedy streams decode: each hostile one gets its
    own answer (4xx, or 200 when it is merely extreme) and every stream finishes as it would alone."""
    prompts = _prompts(tiny)
    room = [min(20, tiny.config.max_position_embeddings - 1 - len(tiny.tokenizer.encode(p))) for p in prompts]
    want = [generate(tiny.params, tiny.config, [p], tiny.tokenizer, max_new_tokens=m).texts[0]
            for p, m in zip(prompts, room)]
    vocab, url = tiny.config.vocab_size, server.url + "/v1/completions"
    hostile = [  # (body, the status it must get)
        (b'{"model": "tiny", "prompt": "x", "top_k": 4611686018427387904}', 400),
        (b'{"model": "tiny", "prompt": "' + b"x" * (5 << 20) + b'"}', 413),
        (b'{"model": "tiny", "prompt": "a\\ud800"}', 400),
        (b'{"model": "tiny", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
        (b'{"model": "tiny", "prompt": "x", "temperature": NaN}', 400),
        (json.dumps({"model": "tiny", "prompt": [[]], "max_tokens": 120, "n": 16, "temperature": 50.0,
                     "top_p": 1e-9, "seed": 2 ** 32 - 1}).encode(), 200),
        (json.dumps({"model": "tiny", "prompt": [vocab - 1] * 100, "max_tokens": 27, "top_k": vocab,
                     "stop": ["\ud7ff" * 3, "", "\n"] + ["zz"] * 13}).encode(), 200),
        (json.dumps({"model": "tiny", "prompt": "", "max_tokens": 0, "echo": True, "logprobs": 5}).encode(), 200),
    ]
    statuses, streams, errors = {}, {}, []

    def innocent(i):
        try:
            text, finish = "", None
            body = {"model": "tiny", "prompt": prompts[i], "max_tokens": room[i], "temperature": 0, "stream": True}
            with httpx.stream("POST", url, timeout=300, json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        text, finish = text + choice["text"], choice["finish_reason"] or finish
            streams[i] = (text, finish)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))

    def attack(j):
        try:
            statuses[j] = httpx.post(url, content=hostile[j][0], timeout=300,
                                     headers={"Content-Type": "application/json"}).status_code
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))
    threads = [threading.Thread(target=innocent, args=(i,)) for i in range(16)]
    threads += [threading.Thread(target=attack, args=(j,)) for j in range(len(hostile))]
    for t in threads:
        t.start()
    with httpx.stream("POST", url, timeout=60, json={"model": "tiny", "prompt": "x", "max_tokens": 100,
                                                     "stream": True}) as r:  # a client that leaves mid-stream
        next(r.iter_lines())
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert statuses == {j: status for j, (_, status) in enumerate(hostile)}
    assert streams == {i: (want[i], streams[i][1]) for i in range(16)}
    assert all(finish in ("length", "stop") for _, finish in streams.values())
    health = httpx.get(server.url + "/health").json()
    assert health["running"] == 0 and health["waiting"] == 0
