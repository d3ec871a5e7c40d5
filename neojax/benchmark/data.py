"""Data rows: packed batches from token shards, the token cache build and the quickstart's first step."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from neojax.benchmark.common import free_port, row, synthetic_text, synthetic_tokenizer
from neojax.data.pipeline import TokenCache, TrainBatches
from neojax.model import preset


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
    text = synthetic_text()
    docs = [text(100) for _ in range(documents)]
    with tempfile.TemporaryDirectory() as d:
        synthetic_tokenizer(docs[:200], preset("tiny"), d)  # saved in d, read by each process
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
    """Seconds from starting the quickstart smoke run (fresh workdir: tokenizer, token cache, compile
    without the persistent compilation cache) to its first logged step, as `processes` processes
    with one CPU device each."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
               "JAX_ENABLE_COMPILATION_CACHE": "0"}
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


def rows(run) -> None:
    run.add(row("data: packed shuffled batches from token shards", "tokens/s", bench_data()))
    for n in (1, 2):
        run.add(row(f"data: token cache build, {n} process(es), per process", "tokens/s", bench_cache_build(n)))
    for n in (1, 2):
        run.add(row(f"data: quickstart smoke, {n} process(es): time to first step", "s", bench_first_step(n)))
