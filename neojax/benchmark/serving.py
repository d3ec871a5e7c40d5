"""Serving rows: the server over HTTP in this process (continuous batching against one request at
a time, time to first token, prefix reuse, serve --draft)."""
from __future__ import annotations

import concurrent.futures
import functools
import http.client
import json
import socket
import tempfile
import threading
import time

import jax
import numpy as np
import uvicorn

from neojax import sharding
from neojax.benchmark.common import row, synthetic_text, synthetic_tokenizer
from neojax.benchmark.decode import bench_decode, bench_speculative
from neojax.serve.api import build_app
from neojax.serve.engine import Engine, EngineSettings
from neojax.serve.relay import Relay
from neojax.testing.pairs import agreeing_pair, draft_width


def serving(params, config, tokenizer, max_batch, max_len, prefix_cache_mb=0, draft=None):
    """(port, stop) of a server on 127.0.0.1 in this process, warmed up; on another process of a
    multi-host run (None, None), once its engine has replayed process 0's to the end."""
    lead, relay = sharding.is_lead_process(), Relay() if jax.process_count() > 1 else None
    settings = EngineSettings(max_batch=max_batch, max_len=max_len, chunk=64, prefix_cache_mb=prefix_cache_mb)
    engine = Engine(params, config, tokenizer, settings, draft=draft, relay=relay if lead else None)
    engine.warm_up()
    if not lead:
        engine.follow(relay)
        return None, None
    engine.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine, "bench", access_log=False), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))  # this process's logging as it is
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)
        engine.shutdown()
    stop.engine = engine
    return port, stop


def serve_workload(config, clients, new_tokens, max_len):
    """(text(n), tokenizer, `clients` prompts of 32-256 tokens, max_len, the longest a prompt may be)
    for the serving rows."""
    text = synthetic_text()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = synthetic_tokenizer([text(200) for _ in range(200)], config, d)
    max_len = min(max_len, config.max_position_embeddings)
    longest = min(256, max_len - new_tokens - 1)  # a small shape's context holds less
    prompts = [tokenizer.encode(text(400))[:n] for n in rng.integers(min(32, longest), longest + 1, clients)]
    return text, tokenizer, prompts, max_len, longest


def one_request(port, prompt, new_tokens):
    """(seconds to the first token, generated tokens) of one streamed greedy request."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    start, first, tokens = time.perf_counter(), None, 0
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    for line in conn.getresponse():
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"]:  # its first text, or its end (a random model may
                first = time.perf_counter() - start  # write tokens that are no text yet)
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens) if chunk.get("usage") else tokens
    conn.close()
    return first or 0.0, tokens


def concurrent_streams(params, config, tokenizer, workloads, max_len, new_tokens, prefix_cache_mb=0):
    """Per workload (a list of prompts), one after another on one server with a slot per prompt:
    (generated tokens/s, [(time to first token, tokens)] per prompt) of every prompt streamed at
    once, after one request to warm the HTTP path."""
    port, stop = serving(params, config, tokenizer, max(map(len, workloads)), max_len, prefix_cache_mb)
    if port is None:  # another process of a multi-host run: process 0 measures
        return [(0.0, [(0.0, 0)] * len(prompts)) for prompts in workloads]
    out = []
    try:
        for prompts in workloads:
            one_request(port, prompts[0], new_tokens)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
                results = list(pool.map(lambda p: one_request(port, p, new_tokens), prompts))
            out.append((sum(n for _, n in results) / (time.perf_counter() - start), results))
        return out
    finally:
        stop()


def bench_serve(config, params, clients=16, new_tokens=64, max_len=512):
    """The server over HTTP: `clients` concurrent greedy streams (prompts of 32-256 tokens, `new_tokens`
    each) on `clients` slots with continuous batching, against the same requests sent one at a time
    to a one-slot server. Returns generated tokens/s of both, the concurrent run's
    time-to-first-token percentiles, and the limit: generate's greedy decode rate at batch `clients`
    in this run (the engine's steps are those decode steps plus prefill and the host's work)."""
    text, tokenizer, prompts, max_len, longest = serve_workload(config, clients, new_tokens, max_len)
    one = functools.partial(one_request, new_tokens=new_tokens)
    # a chat's shared system prompt: the same 200 tokens (fewer on a short context) before each prompt
    system = tokenizer.encode(text(300))[:min(200, max(longest - 32, longest // 2))]
    shared = [system + p[:longest - len(system)] for p in prompts]
    (batched, results), reuse_off = concurrent_streams(params, config, tokenizer, [prompts, shared], max_len,
                                                       new_tokens)
    reuse_on, = concurrent_streams(params, config, tokenizer, [shared], max_len, new_tokens, prefix_cache_mb=256)
    # (with reuse, the warm-up request computes the system prompt once)
    reuse = {name: (rate, float(np.percentile([t for t, _ in runs], 50)))
             for name, (rate, runs) in (("off", reuse_off), ("on", reuse_on))}
    port, stop, alone = *serving(params, config, tokenizer, 1, max_len), 0.0
    if port is not None:
        try:
            one(port, prompts[0])
            start = time.perf_counter()
            alone = sum(one(port, p)[1] for p in prompts) / (time.perf_counter() - start)
        finally:
            stop()
    ttft = np.array([t for t, _ in results])
    lengths = [len(p) for p in prompts]
    limit, _ = bench_decode(config, params, clients, new_tokens=new_tokens, torch_too=False, rounds=2)
    return {"batched": batched, "alone": alone, "ttft_p50": float(np.percentile(ttft, 50)),
            "ttft_p99": float(np.percentile(ttft, 99)), "limit": limit, "system": len(system),
            "reuse_off": reuse["off"], "reuse_on": reuse["on"],
            "workload": f"prompts {min(lengths)}-{max(lengths)} tokens, {new_tokens} new tokens"}


def bench_serve_draft(config, params, requests=4, new_tokens=64, residual=0.0):
    """One stream at a time through the server (4 slots), with and without a draft (agreeing_pair)
    proposing 4 tokens a step: (tokens/s without, with, the share of proposals kept)."""
    target, draft = agreeing_pair(config, params, residual=residual)
    _, tokenizer, prompts, max_len, _ = serve_workload(config, requests, new_tokens, 512)
    out = {}
    for side, pair in (("plain", None), ("drafted", draft)):
        port, stop = serving(target, config, tokenizer, 4, max_len, draft=pair)
        if port is None:  # another process of a multi-host run
            return 0.0, 0.0, 0.0
        try:
            one_request(port, prompts[0], new_tokens)  # the HTTP path warm
            start = time.perf_counter()
            tokens = sum(one_request(port, p, new_tokens)[1] for p in prompts)
            out[side] = tokens / (time.perf_counter() - start)
            kept = stop.engine.runner.kept / max(stop.engine.runner.proposed, 1)
        finally:
            stop()
    return out["plain"], out["drafted"], kept


def rows(run) -> None:
    config, params, dtype = run.config, run.params, run.args.dtype
    work = run.work
    served = bench_serve(config, run.placed, work.clients, work.serve_tokens)
    label = f"serve {run.name} {dtype}{run.on}, {work.clients} concurrent streams ({served['workload']})"
    run.add(row(f"{label}: continuous batching", "tokens/s", served["batched"]))
    run.add(row(f"{label}: one request at a time", "tokens/s", served["alone"]))
    run.add(row(f"{label}: time to first token p50", "s", served["ttft_p50"]))
    run.add(row(f"{label}: time to first token p99", "s", served["ttft_p99"]))
    run.add(row(f"{label}: the limit, generate's batch-16 decode in this run", "tokens/s", served["limit"]))
    run.add(row(f"{label}: continuous batching / the limit", "%", 100 * served["batched"] / served["limit"]))
    for state in ("off", "on"):
        rate, first = served[f"reuse_{state}"]
        shared = f"{label}, a shared {served['system']}-token system prompt, prefix reuse {state}"
        run.add(row(f"{shared}: tokens/s", "tokens/s", rate))
        run.add(row(f"{shared}: time to first token p50", "s", first))
    for residual in (0.02, 0.3):  # a pair that mostly agrees; one that agrees on about 60% of proposals
        plain, drafted, kept = bench_speculative(config, params, new_tokens=work.new_tokens,
                                                 rounds=min(2, work.rounds), residual=residual)
        label = (f"speculative greedy decode {run.name} {dtype} batch 1, {work.new_tokens} tokens, a 2-layer "
                 f"{draft_width(config)}-wide draft proposing 4 (the target's first 2 blocks compute the draft's "
                 f"function; its other blocks write {residual}x their output): {kept:.0%} of proposals kept")
        run.add(row(f"{label}: without the draft", "tokens/s", plain))
        run.add(row(f"{label}: with it", "tokens/s", drafted))
        run.add(row(f"{label}: speed-up", "x", drafted / plain))
    plain, drafted, kept = bench_serve_draft(config, run.placed, min(4, work.clients), work.serve_tokens)
    label = (f"serve {run.name} {dtype}{run.on}, one stream at a time, {work.serve_tokens} tokens each, serve --draft "
             f"(a 2-layer "
             f"{draft_width(config)}-wide pair that always agrees) proposing 4 a step: {kept:.0%} of proposals kept")
    run.add(row(f"{label}: without the draft", "tokens/s", plain))
    run.add(row(f"{label}: with it", "tokens/s", drafted))
    run.add(row(f"{label}: speed-up", "x", drafted / max(plain, 1e-9)))
