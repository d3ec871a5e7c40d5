"""python -m neojax.benchmark [--only peak,train,memory,local,decode,eval,serve,mesh,data] [--mesh SPEC]
    [--output bench.json] [--coordinator HOST:PORT --num_processes N --process_id I]

Measures, on whatever devices are present, side by side with transformers (torch, CPU) where that
applies: the matmul peak, training tokens/s and MFU at T=2048, the compiled peak memory of a
training step with and without rematerialisation, the forward time of a local-only stack at
T=512..4096 (linear in T), greedy decode tokens/s at batch 1 and 16 with time to first token
(--quantize int8: int8 weights against the weight-bandwidth bound; --kv_context N: an int8 KV cache
against the compute dtype's at an N-token context), harness evaluation rates (lambada examples/s,
wikitext tokens/s, wmt examples/s), the server (continuous batching against one request at a time,
time to first token), evaluation and serving on meshes of 1, 2, 4, ... devices (on a CPU the
overhead of the sharded path; on accelerators the scaling) and the data pipeline.
Rows: {name, unit, neojax, transformers, ratio}. Slow: not part of the tests.

On several hosts, every host runs the same command with the multi-host flags and --only
decode,eval,serve: those rows run on a mesh over every process's devices (--mesh, default auto),
the server's engine replayed by the other processes (neojax.serve.relay); process 0 prints and
writes.

On an accelerator: python -m neojax.benchmark --dtype bfloat16 --presets gpt-neo-125M,gpt-neo-1.3B
  --train_batch 16 --remat dots --no_torch
"""
from __future__ import annotations

import concurrent.futures
import datetime
import functools
import glob
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import uvicorn
from tokenizers import ByteLevelBPETokenizer

from neojax import cli, paths, sharding
from neojax.checkpoint.hf import state_dict_from_params
from neojax.data.pipeline import TokenCache, TrainBatches
from neojax.data.tokenizer import Tokenizer
from neojax.evaluate import evaluate
from neojax.flops import (
    datasheet_peak,
    full_causal_train_flops_per_token,
    measure_bandwidth,
    measure_peak_flops,
    train_flops_per_token,
)
from neojax.generate import decode_weights, generate
from neojax.model import PRESETS, GPTNeo, init_params, preset
from neojax.model.config import DTYPES, REMATS, model_shape
from neojax.model.quant import quantize_params
from neojax.serve.api import build_app
from neojax.serve.engine import Engine, EngineSettings
from neojax.serve.relay import Relay
from neojax.train.step import init_state, make_train_step


def _best(fn, repeats=2):
    """Fastest of `repeats` timed calls after one warm-up (which compiles)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _on_accelerator():
    return jax.default_backend() != "cpu"


def _row(name, unit, ours, theirs=None):
    return {"name": name, "unit": unit, "neojax": ours, "transformers": theirs,
            "ratio": None if theirs in (None, 0) else ours / theirs}


def _torch_model(config, params):
    import torch  # deferred: the reference is optional (requirements-test.txt)
    import transformers  # deferred: the reference is optional (requirements-test.txt)

    hf = {k: v for k, v in config.to_hf_dict().items() if k not in ("model_type", "architectures")}
    model = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hf)).eval()
    model.load_state_dict({k: torch.tensor(v) for k, v in state_dict_from_params(params, config).items()},
                          strict=False)
    model.generation_config.eos_token_id = None
    return model


def _train_setup(config, params, seq_len, batch):

    tx = optax.adamw(1e-4)
    state = init_state(config, tx, jax.random.PRNGKey(0), jax.tree.map(jnp.copy, params))  # the step donates it
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq_len + 1)), jnp.int32)
    return make_train_step(config, tx), state, tokens


def bench_train(config, params, seq_len=2048, batch=1, torch_too=True):
    step, state, tokens = _train_setup(config, params, seq_len, batch)
    holder = {"state": state}
    steps = 5 if _on_accelerator() else 1

    def run():
        for _ in range(steps):
            holder["state"], m = step(holder["state"], tokens)
        jax.block_until_ready(m["loss"])
    seconds = _best(run, repeats=2) / steps
    ours = batch * seq_len / seconds
    theirs = None
    if torch_too:
        import torch  # deferred: the reference is optional (requirements-test.txt)
        model = _torch_model(config, params).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t = torch.tensor(np.asarray(tokens), dtype=torch.long)

        def torch_step():
            opt.zero_grad()
            model(input_ids=t[:, :-1], labels=t[:, :-1]).loss.backward()
            opt.step()
        theirs = batch * seq_len / _best(torch_step, repeats=1)
    return ours, theirs


def bench_memory(config, params, seq_len=2048, batch=1):
    """Compiled peak bytes of one training step (XLA's buffer assignment; nothing is run)."""
    step, state, tokens = _train_setup(config, params, seq_len, batch)
    stats = step.lower(state, tokens).compile().memory_analysis()
    if _on_accelerator() and getattr(stats, "peak_memory_in_bytes", 0):
        return stats.peak_memory_in_bytes
    # XLA:CPU's peak_memory_in_bytes leaves out the temporaries: add up the buffers instead.
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes)


def bench_local_scaling(config, lengths=(512, 1024, 2048, 4096), batch=1):
    """Forward seconds of a stack of local layers only, positions extended to the longest T."""
    local = config.replace(attention_types=[[["local"], config.num_layers]], max_position_embeddings=max(lengths))
    params = init_params(local, jax.random.key(1))
    forward = jax.jit(lambda p, t: GPTNeo(local).apply({"params": p}, t))
    out = {}
    for t in lengths:
        tokens = jnp.zeros((batch, t), jnp.int32)
        out[t] = _best(lambda: forward(params, tokens).block_until_ready(), repeats=3)
    return out


def bench_decode(config, params, batch, new_tokens=128, prompt_len=32, torch_too=True, rounds=3):
    """Greedy decode tokens/s after the first token: (generation of new_tokens - one token's).
    Rounds alternate neojax and transformers, and each side keeps its fastest run of each length,
    so that a slow spell of a shared machine does not fall on one side only."""
    prompts = [[1 + i % (config.vocab_size - 1) for i in range(prompt_len)]] * batch
    weights = decode_weights(params, config)  # made once, as a session generating repeatedly would
    sides = {"neojax": lambda n: generate(params, config, prompts, max_new_tokens=n, stop_tokens=(), weights=weights)}
    if torch_too:
        import torch  # deferred: the reference is optional (requirements-test.txt)
        model = _torch_model(config, params)
        ids = torch.tensor(prompts)

        def hf(n):
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0)
        sides["transformers"] = hf
    best = {(side, n): float("inf") for side in sides for n in (new_tokens, 1)}
    for side, run in sides.items():  # warm-up: compiles
        run(new_tokens), run(1)
    for _ in range(rounds):
        for (side, n) in best:
            start = time.perf_counter()
            sides[side](n)
            best[side, n] = min(best[side, n], time.perf_counter() - start)
    rate = {side: batch * (new_tokens - 1) / (best[side, new_tokens] - best[side, 1]) for side in sides}
    return rate["neojax"], rate.get("transformers")


def decode_weight_bytes(params, config) -> int:
    """Bytes of weights a decode step reads: every kernel and the tied head (whole), in the form
    generate multiplies by (compute-dtype copies; int8 stays int8), and the scales."""
    dtype = jnp.dtype(config.dtype).itemsize
    total = 0
    for path, x in flax.traverse_util.flatten_dict(params).items():
        if path[-1] in ("kernel", "kernel_scale") or path[0] in ("wte", "wte_scale"):
            total += x.size * (x.dtype.itemsize if x.dtype in (np.int8,) or x.ndim == 1 else dtype)
    return total


def draft_width(config) -> int:
    """The agreeing pair's draft width: a third of the target's (or a half, or all of it), whole heads."""
    return config.hidden_size // next(c for c in (3, 2, 1) if config.num_heads % c == 0)


def agreeing_pair(config, params, layers: int = 2, residual: float = 0.02, seed: int = 7):
    """(target params, (draft params, draft config)): a random `layers`-block draft draft_width
    wide (the target's head size, so a vocabulary head a third as large), and a target of
    `config`'s shape whose first `layers` blocks compute exactly the draft's function (see `widen`)
    and whose other blocks (from `params`) write `residual` times their output into the residual
    stream: a pair that agrees on most tokens (every token at residual 0), built rather than
    trained, with a draft step a fraction of a target step."""
    width = draft_width(config)
    draft_config = config.replace(num_layers=layers, hidden_size=width, num_heads=width // config.head_dim,
                                  attention_types=((tuple(config.attention_layers[:layers]), 1),))
    draft = jax.device_get(init_params(draft_config, jax.random.key(seed)))
    target = {**dict(params), **widen(draft, config.hidden_size // width)}
    for i in range(layers, config.num_layers):
        block = params[f"h_{i}"]
        target[f"h_{i}"] = {**block, "attn": {**block["attn"], "out_proj": jax.tree.map(
                                lambda x: x * residual, block["attn"]["out_proj"])},
                            "mlp": {**block["mlp"], "c_proj": jax.tree.map(lambda x: x * residual,
                                                                          block["mlp"]["c_proj"])}}
    return target, (draft, draft_config)


def widen(params, copies: int) -> dict:
    """The same function `copies` times as wide: the residual stream holds `copies` copies of the
    narrow one. Embeddings, norms and biases tile; every kernel tiles both ways divided by `copies`
    (a sum over the copies of the input); heads keep their size, so target head h is narrow head
    h mod heads; the final norm's output is divided by `copies`, so the tied head's logits, a sum
    over the copies, are the narrow model's. Layer norm sees the same mean and variance."""
    def tile(path, x):
        names = [p.key for p in path]
        x = np.asarray(x)
        if names[-1] == "kernel":
            return np.tile(x, (copies, copies)) / copies
        if names[0] in ("wte", "wpe"):
            return np.tile(x, (1, copies))
        return np.tile(x, copies) / (copies if names[0] == "ln_f" else 1)
    return jax.tree_util.tree_map_with_path(tile, params)


def bench_speculative(config, params, k=4, new_tokens=128, prompt_len=32, rounds=2, residual=0.02):
    """Greedy decode at batch 1 with and without a draft (agreeing_pair) proposing k tokens a
    round: (tokens/s without, with, the share of proposals kept). The texts must agree."""
    target, draft = agreeing_pair(config, params, residual=residual)
    prompt = [list(range(1, prompt_len + 1))]
    weights = decode_weights(target, config)
    plain = lambda: generate(target, config, prompt, max_new_tokens=new_tokens, stop_tokens=(), weights=weights)
    drafted = lambda: generate(target, config, prompt, max_new_tokens=new_tokens, stop_tokens=(), weights=weights,
                               draft=draft, draft_tokens=k)
    want, got = plain(), drafted()  # warm-up: compiles
    if got.tokens != want.tokens:
        raise AssertionError("speculative decoding changed the greedy output")
    best = {"plain": float("inf"), "drafted": float("inf")}
    for _ in range(rounds):
        for side, run in (("plain", plain), ("drafted", drafted)):
            start = time.perf_counter()
            run()
            best[side] = min(best[side], time.perf_counter() - start)
    return new_tokens / best["plain"], new_tokens / best["drafted"], got.acceptance


def bench_serve_draft(config, params, requests=4, new_tokens=64, residual=0.0):
    """One stream at a time through the server (4 slots), with and without a draft (agreeing_pair)
    proposing 4 tokens a step: (tokens/s without, with, the share of proposals kept)."""
    target, draft = agreeing_pair(config, params, residual=residual)
    _, tokenizer, prompts, max_len, _ = _serve_workload(config, requests, new_tokens, 512)
    out = {}
    for side, pair in (("plain", None), ("drafted", draft)):
        port, stop = _serving(target, config, tokenizer, 4, max_len, draft=pair)
        if port is None:  # another process of a multi-host run
            return 0.0, 0.0, 0.0
        try:
            _one_request(port, prompts[0], new_tokens)  # the HTTP path warm
            start = time.perf_counter()
            tokens = sum(_one_request(port, p, new_tokens)[1] for p in prompts)
            out[side] = tokens / (time.perf_counter() - start)
            kept = stop.engine.runner.kept / max(stop.engine.runner.proposed, 1)
        finally:
            stop()
    return out["plain"], out["drafted"], kept


def bench_ttft(config, params, prompt_len=512):
    """Seconds to the first new token at batch 1 (prefill): (prompt length, seconds); the prompt
    is shortened to half the context for models with fewer positions."""
    prompt_len = min(prompt_len, config.max_position_embeddings // 2)
    prompt = [list(np.random.default_rng(0).integers(0, config.vocab_size, prompt_len))]
    weights = decode_weights(params, config)
    return prompt_len, _best(lambda: generate(params, config, prompt, max_new_tokens=1, stop_tokens=(),
                                              weights=weights))


def bench_data(tokens=20_000_000, seq_len=2048, batch=16):
    """Reading pre-tokenised shards: packed, shuffled batches per second -> tokens/s."""
    with tempfile.TemporaryDirectory() as d:
        np.random.default_rng(0).integers(0, 50257, tokens, dtype=np.uint16).tofile(
            os.path.join(d, "shard-00000.train.bin"))
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump({"dtype": "uint16", "train_tokens": tokens, "valid_tokens": 0, "shards": [[tokens, 0]]}, f)
        batches = TrainBatches([TokenCache(d)], seq_len, batch, seed=0)
        next(batches)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 3:
            next(batches)
            n += 1
        return n * batch * seq_len / (time.perf_counter() - start)


def bench_cache_build(processes: int, documents: int = 30000, shard_docs: int = 1000) -> float:
    """Token cache build as `processes` real processes dividing the shards (a synthetic jsonl corpus of
    about 100 words a document, a byte-level BPE trained here): tokens/s per process."""
    text = _synthetic_text()
    docs = [text(100) for _ in range(documents)]
    with tempfile.TemporaryDirectory() as d:
        _synthetic_tokenizer(docs[:200], preset("tiny"), d)  # saved in d, read by each process
        corpus = os.path.join(d, "docs.jsonl")
        with open(corpus, "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
        code = ("import sys; from neojax.data.tokenizer import Tokenizer; from neojax.data.pipeline import "
                "build_token_cache as b; b('jsonl', {'paths': sys.argv[1]}, Tokenizer.from_path(sys.argv[2]), "
                f"sys.argv[3], progress=False, process_index=int(sys.argv[4]), process_count={processes}, "
                f"shard_docs={shard_docs})")
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code, corpus, d, os.path.join(d, "cache"), str(i)])
                 for i in range(processes)]
        if any(p.wait() for p in procs):
            raise RuntimeError("a cache-building process failed")
        seconds = time.perf_counter() - start
        meta = next(json.load(open(m)) for m in glob.glob(os.path.join(d, "cache", "*", "meta.json")))
        return (meta["train_tokens"] + meta["valid_tokens"]) / processes / seconds


def bench_first_step(processes: int) -> float:
    """Seconds from starting the quickstart smoke run (fresh workdir: tokenizer, token cache, compile)
    to its first logged step, as `processes` processes with one CPU device each."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        command = [sys.executable, "-m", "neojax.train", "--config", "quickstart:smoke", "--workdir",
                   os.path.join(d, "run"), "--config.train.log_every=1", f"--config.mesh=data={processes}"]
        if processes > 1:
            command += ["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(processes)]
        start = time.perf_counter()
        procs = [subprocess.Popen(command + (["--process_id", str(i)] if processes > 1 else []), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for i in range(processes)]
        seconds = next((time.perf_counter() - start for line in procs[0].stdout if line.startswith("step 1/")), None)
        for p in procs:
            p.communicate()
        if seconds is None:
            raise RuntimeError("the smoke run logged no first step")
        return seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_tokenize(tokenizer, texts):
    start = time.perf_counter()
    n = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return n / (time.perf_counter() - start)


def bench_eval(config, params, lambada_docs=64, wiki_pages=2, wmt_docs=16, batch_size=8, translate=True):
    """Harness requests on synthetic text with a byte-level BPE trained here: lambada_openai
    examples/s (about 75 words each, as the real set), wikitext tokens/s (rolling windows over
    about 4,000-token pages) and wmt16-de-en examples/s (greedy generation until a newline, at most
    256 tokens); the second, warm run of each. Also the tokenizer's encode rate."""

    text = _synthetic_text()
    lambada = [{"text": text(75)} for _ in range(lambada_docs)]
    pages = [{"page": "\n".join(text(100) for _ in range(40))} for _ in range(wiki_pages)]
    wmt = [{"translation": {"de": text(25), "en": text(25)}} for _ in range(wmt_docs)]
    with tempfile.TemporaryDirectory() as d:
        tokenizer = _synthetic_tokenizer([r["text"] for r in lambada] + [p["page"] for p in pages], config, d)
        for name, rows in (("lambada_openai", lambada), ("wikitext", pages), ("wmt16-de-en", wmt)):
            with open(os.path.join(d, f"{name}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        run = lambda task: evaluate(params, config, tokenizer, [task], d, batch_size=batch_size)[task]
        translate = translate and config.max_position_embeddings > 2 * 256  # the task generates up to 256 tokens
        run("lambada_openai"), run("wikitext"), translate and run("wmt16-de-en")  # compiles every padded shape
        lam, wiki = run("lambada_openai"), run("wikitext")
        trans = run("wmt16-de-en") if translate else None
        return {"lambada": lam["n"] / lam["seconds"], "wikitext": wiki["tokens_scored"] / wiki["seconds"],
                **({"wmt": trans["n"] / trans["seconds"], "wmt_tokens": trans["tokens_generated"] / trans["seconds"]}
                   if trans else {}),
                "tokenizer": bench_tokenize(tokenizer, [p["page"] for p in pages] * 20)}


def _synthetic_text():
    """text(n): n random words of English-like letters and a period (a fixed seed)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("etaoinshrdlucmfwyp"), rng.integers(2, 9))) for _ in range(3000)]
    return lambda n: " ".join(rng.choice(words, n)) + "."


def _synthetic_tokenizer(texts, config, directory) -> Tokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=min(8192, config.vocab_size), special_tokens=["<|endoftext|>"])
    bpe.save_model(directory)
    return Tokenizer.from_path(directory)


def _serving(params, config, tokenizer, max_batch, max_len, prefix_cache_mb=0, draft=None):
    """(port, stop) of a server on 127.0.0.1 in this process, warmed up; on another process of a
    multi-host run (None, None), once its engine has replayed process 0's to the end."""
    relay = Relay() if jax.process_count() > 1 else None
    settings = EngineSettings(max_batch=max_batch, max_len=max_len, chunk=64, prefix_cache_mb=prefix_cache_mb)
    engine = Engine(params, config, tokenizer, settings, draft=draft, relay=relay if sharding.speaks() else None)
    engine.warm_up()
    if not sharding.speaks():
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


def _serve_workload(config, clients, new_tokens, max_len):
    """(text(n), tokenizer, `clients` prompts of 32-256 tokens, max_len, the longest a prompt may be)
    for the serving rows."""
    text = _synthetic_text()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = _synthetic_tokenizer([text(200) for _ in range(200)], config, d)
    max_len = min(max_len, config.max_position_embeddings)
    longest = min(256, max_len - new_tokens - 1)  # a small shape's context holds less
    prompts = [tokenizer.encode(text(400))[:n] for n in rng.integers(min(32, longest), longest + 1, clients)]
    return text, tokenizer, prompts, max_len, longest


def bench_mesh(config, params, counts, clients=16, new_tokens=64):
    """Evaluation and serving on meshes of `counts` devices: lambada_openai examples/s and wikitext
    tokens/s with the requests split over data=n (batch 8 per device), serving tokens/s with the
    model split over tensor=n (16 streams), and the same rows of the unplaced single-device path
    (what the sharded path at one device is held to)."""
    host = jax.device_get(params)
    out = {"single": bench_eval(config, host, translate=False)}
    _, tokenizer, prompts, max_len, _ = _serve_workload(config, clients, new_tokens, 512)
    (out["single"]["serve"], _), = _concurrent(host, config, tokenizer, [prompts], max_len, new_tokens)
    for n in counts:
        placed = sharding.place(host, config, sharding.make_mesh({"data": n}, jax.devices()[:n]))
        out[("data", n)] = bench_eval(config, placed, batch_size=8 * n, translate=False)
        if config.num_heads % n == 0:
            placed = sharding.place(host, config, sharding.make_mesh({"tensor": n}, jax.devices()[:n]))
            (out[("tensor", n)], _), = _concurrent(placed, config, tokenizer, [prompts], max_len, new_tokens)
        del placed
    return out


def _one_request(port, prompt, new_tokens):
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


def _concurrent(params, config, tokenizer, workloads, max_len, new_tokens, prefix_cache_mb=0):
    """Per workload (a list of prompts), one after another on one server with a slot per prompt:
    (generated tokens/s, [(time to first token, tokens)] per prompt) of every prompt streamed at
    once, after one request to warm the HTTP path."""
    port, stop = _serving(params, config, tokenizer, max(map(len, workloads)), max_len, prefix_cache_mb)
    if port is None:  # another process of a multi-host run: process 0 measures
        return [(0.0, [(0.0, 0)] * len(prompts)) for prompts in workloads]
    out = []
    try:
        for prompts in workloads:
            _one_request(port, prompts[0], new_tokens)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
                results = list(pool.map(lambda p: _one_request(port, p, new_tokens), prompts))
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
    text, tokenizer, prompts, max_len, longest = _serve_workload(config, clients, new_tokens, max_len)
    one = functools.partial(_one_request, new_tokens=new_tokens)
    # a chat's shared system prompt: the same 200 tokens (fewer on a short context) before each prompt
    system = tokenizer.encode(text(300))[:min(200, max(longest - 32, longest // 2))]
    shared = [system + p[:longest - len(system)] for p in prompts]
    (batched, results), reuse_off = _concurrent(params, config, tokenizer, [prompts, shared], max_len, new_tokens)
    reuse_on, = _concurrent(params, config, tokenizer, [shared], max_len, new_tokens, prefix_cache_mb=256)
    # (with reuse, the warm-up request computes the system prompt once)
    reuse = {name: (rate, float(np.percentile([t for t, _ in runs], 50)))
             for name, (rate, runs) in (("off", reuse_off), ("on", reuse_on))}
    port, stop, alone = *_serving(params, config, tokenizer, 1, max_len), 0.0
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


SECTIONS = ("peak", "train", "memory", "local", "decode", "eval", "serve", "mesh", "data")
ON_HOSTS = ("peak", "decode", "eval", "serve")  # the sections a multi-host run measures on its mesh


def main(argv=None):
    parser = cli.ArgumentParser(prog="python -m neojax.benchmark", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--presets", default="gpt-neo-125M", help="comma-separated model shapes: presets, or "
                        "checkpoints and workdirs (their shapes; weights are random)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--train_batch", type=cli.positive_int, default=1)
    parser.add_argument("--seq_len", type=cli.positive_int, default=2048)
    parser.add_argument("--remat", default="none", choices=REMATS, help="for the train rows")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--decode_batches", default="1,16", help="batch sizes of the decode rows")
    parser.add_argument("--quantize", choices=["int8"], help="decode rows: also int8 weights (and bfloat16), against "
                        "the weight-bandwidth bound")
    parser.add_argument("--mesh", help="run the decode, eval and serve rows on this mesh (e.g. data=8 or tensor=4; "
                        "default: one device, unplaced; with the multi-host flags: auto); the mesh rows sweep 1, "
                        "2, 4, ... devices anyway")
    parser.add_argument("--kv_context", type=cli.positive_int, help="decode rows also at this context (a prompt 128 "
                        "tokens shorter), with the KV cache in the compute dtype and in int8")
    sharding.add_distributed_options(parser)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if not sections or sections - set(SECTIONS):
        raise cli.UsageError(f"--only {args.only}: sections are {', '.join(SECTIONS)}")
    hosts = args.coordinator or (args.num_processes or 1) > 1
    if hosts and sections - set(ON_HOSTS):
        raise cli.UsageError(f"--only {args.only}: {', '.join(sorted(sections - set(ON_HOSTS)))} measure one "
                             f"process; with the multi-host flags give --only {','.join(ON_HOSTS[1:])}")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if not presets:
        raise cli.UsageError(f"--presets {args.presets!r}: give presets ({', '.join(PRESETS)}) or checkpoint paths")
    shapes = {}  # name -> config: a preset's, or a checkpoint's or workdir's (its weights are not read)
    for name in presets:
        with cli.about(f"--presets {name}"):
            shapes[name] = model_shape(name)
        if args.seq_len > shapes[name].max_position_embeddings:
            raise cli.UsageError(f"--seq_len {args.seq_len} exceeds {name}'s {shapes[name].max_position_embeddings}-"
                                 "token context")
    if args.kv_context is not None and not 128 < args.kv_context <= shapes[presets[0]].max_position_embeddings:
        raise cli.UsageError(f"--kv_context {args.kv_context}: give a context above 128 (the new tokens) and at most "
                             f"{presets[0]}'s {shapes[presets[0]].max_position_embeddings} tokens")
    if args.output:
        cli.writable_output("--output", args.output)
    config = shapes[presets[0]].replace(dtype=args.dtype)
    mesh = None
    if args.mesh or hosts:
        args.mesh = args.mesh or "auto"
        mesh = sharding.inference_mesh(args, [config], rows=8, rows_flag="the eval rows' batch")
    speaks = sharding.speaks()  # process 0 of a multi-host run prints and writes
    # the reference is torch's CPU build (one process's)
    torch_too = not args.no_torch and not _on_accelerator() and jax.process_count() == 1
    params = init_params(config, jax.random.key(0))
    placed = params if mesh is None else sharding.place(jax.device_get(params), config, mesh)
    on = "" if mesh is None else f" mesh {','.join(f'{a}={n}' for a, n in mesh.shape.items() if n > 1) or 'data=1'}"
    rows = []

    def add(row):
        rows.append(row)
        if speaks:
            print(f"  measured {row['name']}: {row['neojax']:.2f} {row['unit']}"
                  + ("" if row["transformers"] is None else f" (transformers {row['transformers']:.2f})"), flush=True)
        if speaks and args.output:  # after every row: a run stopped part-way keeps what it measured
            paths.write_text(args.output, json.dumps(
                {"date": datetime.date.today().isoformat(), "device": str(jax.devices()[0].device_kind),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "rows": rows},
                indent=2))
    size = 8192 if _on_accelerator() else 2048
    peak = measure_peak_flops(jnp.dtype(args.dtype), size=size, seconds=2.0)
    add(_row(f"matmul peak ({args.dtype}, {size}^3)", "GFLOP/s", peak / 1e9))
    datasheet = datasheet_peak(jax.devices()[0].device_kind)
    t, b = args.seq_len, args.train_batch
    if "train" in sections:
        for name in presets:
            cfg = shapes[name].replace(dtype=args.dtype, remat=args.remat)
            p = params if name == presets[0] else init_params(cfg, jax.random.key(0))
            ours, theirs = bench_train(cfg, p, t, b, torch_too=torch_too and name == presets[0])
            label = f"train {name} T={t} batch {b} {args.dtype} remat={args.remat}"
            add(_row(label, "tokens/s", ours, theirs))
            add(_row(f"{label} MFU (6N + attention FLOPs / measured peak)", "%",
                     100 * ours * train_flops_per_token(cfg, t) / peak))
            add(_row(f"{label} MFU, every layer's attention counted causal over T (local windows not credited) / "
                     "measured peak", "%", 100 * ours * full_causal_train_flops_per_token(cfg, t) / peak))
            if datasheet and args.dtype == "bfloat16":
                add(_row(f"{label} MFU (6N + attention FLOPs / the datasheet's {datasheet / 1e12:.0f} TFLOP/s)", "%",
                         100 * ours * train_flops_per_token(cfg, t) / datasheet))
            del p
    if "memory" in sections:
        for remat in ("none", "dots", "full"):
            peak_bytes = bench_memory(config.replace(remat=remat), params, t, b)
            add(_row(f"train step peak memory {presets[0]} T={t} batch {b} remat={remat}", "MB", peak_bytes / 1e6))
    if "local" in sections:
        times = bench_local_scaling(config)
        for length, seconds in times.items():
            add(_row(f"local-only {presets[0]} forward T={length} (per token vs T=512: "
                     f"{seconds / length / (times[512] / 512):.2f}x)", "ms", 1e3 * seconds))
    try:
        decode_batches = [int(b) for b in args.decode_batches.split(",")]
    except ValueError:
        decode_batches = []
    if not decode_batches or min(decode_batches) < 1:
        raise cli.UsageError(f"--decode_batches {args.decode_batches}: give positive integers, comma-separated")
    if "decode" in sections:
        plain = {}  # batch -> tokens/s of config's own dtype, unplaced: the --quantize rows reuse it
        for batch in decode_batches:
            ours, theirs = bench_decode(config, placed, batch, torch_too=torch_too)
            plain[batch] = ours if mesh is None else None
            add(_row(f"greedy decode {presets[0]} {args.dtype}{on} batch {batch} (128 new tokens)", "tokens/s",
                     ours, theirs))
        prompt_len, seconds = bench_ttft(config, params)
        add(_row(f"time to first token, {prompt_len}-token prompt, batch 1", "s", seconds))
        if args.quantize:
            bandwidth = measure_bandwidth()
            add(_row("weight-streaming bandwidth (1-row product with a 256 MB float32 matrix)", "GB/s",
                     bandwidth / 1e9))
            variants = [(args.dtype, config, params),
                        (f"int8 weights ({args.dtype} compute)", config, jax.device_get(quantize_params(params)))]
            if not _on_accelerator():  # the other float dtype too: XLA:CPU converts bfloat16 weights as it goes
                other = "bfloat16" if args.dtype == "float32" else "float32"
                variants.insert(1, (other, config.replace(dtype=other), params))
            for label, cfg, p in variants:
                step_bytes = decode_weight_bytes(p, cfg)
                bound = bandwidth / step_bytes
                add(_row(f"decode bound {presets[0]} {label}: weight bytes a step {step_bytes / 1e6:.0f} MB / "
                         "bandwidth", "tokens/s", bound))
                for batch in decode_batches:
                    reuse = cfg is config and p is params and plain[batch] is not None
                    ours = plain[batch] if reuse else bench_decode(cfg, p, batch, torch_too=False)[0]
                    share = 100 * ours / batch / bound
                    add(_row(f"greedy decode {presets[0]} {label} batch {batch} (steps at {share:.0f}% of the "
                             "bound's rate)", "tokens/s", ours))
        for kv in ("auto", "int8") if args.kv_context else ():
            for batch in decode_batches:
                ours, _ = bench_decode(config.replace(kv_cache=kv), params, batch, prompt_len=args.kv_context - 128,
                                       torch_too=False, rounds=2)
                add(_row(f"greedy decode {presets[0]} {args.dtype} batch {batch} at a {args.kv_context}-token context, "
                         f"KV cache {'int8' if kv == 'int8' else args.dtype}", "tokens/s", ours))
    if "eval" in sections:
        rates = bench_eval(config, placed)
        add(_row(f"evaluate lambada_openai {presets[0]} {args.dtype}{on} (batch 8)", "examples/s", rates["lambada"]))
        add(_row(f"evaluate wikitext {presets[0]} {args.dtype}{on} (rolling windows)", "tokens/s", rates["wikitext"]))
        if "wmt" in rates:
            add(_row(f"evaluate wmt16-de-en {presets[0]} {args.dtype}{on} (batch 8, greedy until newline)",
                     "examples/s", rates["wmt"]))
            add(_row(f"evaluate wmt16-de-en {presets[0]} {args.dtype}{on} generated", "tokens/s",
                     rates["wmt_tokens"]))
        add(_row("tokenizer: byte-level BPE, encode_batch", "tokens/s", rates["tokenizer"]))
    if "serve" in sections:
        served = bench_serve(config, placed)
        label = f"serve {presets[0]} {args.dtype}{on}, 16 concurrent streams ({served['workload']})"
        add(_row(f"{label}: continuous batching", "tokens/s", served["batched"]))
        add(_row(f"{label}: one request at a time", "tokens/s", served["alone"]))
        add(_row(f"{label}: time to first token p50", "s", served["ttft_p50"]))
        add(_row(f"{label}: time to first token p99", "s", served["ttft_p99"]))
        add(_row(f"{label}: the limit, generate's batch-16 decode in this run", "tokens/s", served["limit"]))
        add(_row(f"{label}: continuous batching / the limit", "%", 100 * served["batched"] / served["limit"]))
        for state in ("off", "on"):
            rate, first = served[f"reuse_{state}"]
            shared = f"{label}, a shared {served['system']}-token system prompt, prefix reuse {state}"
            add(_row(f"{shared}: tokens/s", "tokens/s", rate))
            add(_row(f"{shared}: time to first token p50", "s", first))
        for residual in (0.02, 0.3):  # a pair that mostly agrees; one that agrees on about 60% of proposals
            plain, drafted, kept = bench_speculative(config, params, residual=residual)
            label = (f"speculative greedy decode {presets[0]} {args.dtype} batch 1, 128 tokens, a 2-layer "
                     f"{draft_width(config)}-wide draft proposing 4 (the target's first 2 blocks compute the draft's "
                     f"function; its other blocks write {residual}x their output): {kept:.0%} of proposals kept")
            add(_row(f"{label}: without the draft", "tokens/s", plain))
            add(_row(f"{label}: with it", "tokens/s", drafted))
            add(_row(f"{label}: speed-up", "x", drafted / plain))
        plain, drafted, kept = bench_serve_draft(config, placed)
        label = (f"serve {presets[0]} {args.dtype}{on}, one stream at a time, 64 tokens each, serve --draft (a "
                 f"2-layer {draft_width(config)}-wide pair that always agrees) proposing 4 a step: {kept:.0%} of "
                 "proposals kept")
        add(_row(f"{label}: without the draft", "tokens/s", plain))
        add(_row(f"{label}: with it", "tokens/s", drafted))
        add(_row(f"{label}: speed-up", "x", drafted / max(plain, 1e-9)))
    if "mesh" in sections:
        counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= jax.device_count()]
        meshes = bench_mesh(config, params, counts)
        one = meshes["single"]
        add(_row(f"evaluate lambada_openai {presets[0]}, one device unplaced (batch 8)", "examples/s", one["lambada"]))
        add(_row(f"evaluate wikitext {presets[0]}, one device unplaced", "tokens/s", one["wikitext"]))
        add(_row(f"serve {presets[0]} {args.dtype}, 16 concurrent streams, one device unplaced", "tokens/s",
                 one["serve"]))
        for n in counts:
            rates = meshes[("data", n)]
            add(_row(f"evaluate lambada_openai {presets[0]}, mesh data={n} (batch {8 * n})", "examples/s",
                     rates["lambada"]))
            add(_row(f"evaluate wikitext {presets[0]}, mesh data={n}", "tokens/s", rates["wikitext"]))
            if n == 1:
                add(_row("evaluate: the sharded path at one device against the unplaced path (lambada_openai, "
                         "wikitext)", "%", 100 * min(rates["lambada"] / one["lambada"],
                                                     rates["wikitext"] / one["wikitext"])))
            if ("tensor", n) in meshes:
                add(_row(f"serve {presets[0]} {args.dtype}, 16 concurrent streams, mesh tensor={n}", "tokens/s",
                         meshes[("tensor", n)]))
            if n == 1:
                add(_row("serve: the sharded engine at one device against the unplaced one", "%",
                         100 * meshes[("tensor", 1)] / one["serve"]))
    if "data" in sections:
        add(_row("data: packed shuffled batches from token shards", "tokens/s", bench_data()))
        for n in (1, 2):
            add(_row(f"data: token cache build, {n} process(es), per process", "tokens/s", bench_cache_build(n)))
        for n in (1, 2):
            add(_row(f"data: quickstart smoke, {n} process(es): time to first step", "s", bench_first_step(n)))
    if not speaks:
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'unit':<9} {'neojax':>10} {'transformers':>13} {'ratio':>6}")
    for r in rows:
        theirs = "-" if r["transformers"] is None else f"{r['transformers']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"{r['name']:<{width}}  {r['unit']:<9} {r['neojax']:>10.2f} {theirs:>13} {ratio:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
