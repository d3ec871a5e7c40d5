"""A server over two processes (2 CPU devices each, heads split over all 4) on a loopback
coordinator: process 0 listens, process 1 replays its engine's steps; what it serves equals one
process on one device, and stopping process 0 stops both."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import numpy as np
import openai
import pytest
from support import Server, device_env, finish, free_port, processes

PROMPTS = ["The quick brown fox", "Once upon a time, there was", "def hello():\n", "GPT-Neo generates text",
           "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over"]
FLAGS = ["--max_batch", "4", "--chunk", "16", "--prefix_cache_mb", "1", "--model_name", "tiny"]


def answers(url):
    """Concurrent greedy completions (more than the slots: prefill and decode share steps, prefixes are
    reused), a seeded sampled one and echoed prompt logprobs."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    greedy = lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0,
                                                 logprobs=2)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(greedy, PROMPTS + PROMPTS[::-1]))
    sampled = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=10, seed=3, n=2,
                                        temperature=1.2, top_p=0.9)
    echo = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=1)
    return ([o.choices[0].text for o in outs], [o.choices[0].logprobs.token_logprobs for o in outs],
            [c.text for c in sorted(sampled.choices, key=lambda c: c.index)],
            echo.choices[0].logprobs.token_logprobs[1:])


@pytest.mark.slow
def test_two_processes_serve_what_one_process_serves(tiny_hf_with_tokenizer):
    one = Server(tiny_hf_with_tokenizer, *FLAGS)
    try:
        want = answers(one.url)
    finally:
        assert one.stop() == 0, "".join(one.lines)

    hosts = ["--coordinator", f"127.0.0.1:{free_port()}", "--num_processes", "2", "--mesh", "tensor=4"]
    env = device_env(2)
    follower = subprocess.Popen([sys.executable, "-m", "neojax.serve", "--checkpoint", tiny_hf_with_tokenizer,
                                 *FLAGS, *hosts, "--process_id", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
    leader = None
    try:
        leader = Server(tiny_hf_with_tokenizer, *FLAGS, *hosts, "--process_id", "0", devices=2)
        got = answers(leader.url)
        health = httpx.get(leader.url + "/health").json()
        assert leader.stop() == 0, "".join(leader.lines)
        out, _ = follower.communicate(timeout=60)
        assert follower.returncode == 0, out[-3000:]
    finally:
        for p in [follower] + ([leader.proc] if leader else []):
            p.kill()
    assert "following process 0's engine" in out and "serving" not in out
    assert health["compilations"] == 0 and health["steps"] > 0  # nothing compiled after warm-up
    assert got[0] == want[0] and got[2] == want[2]  # text: greedy and seeded samples exactly
    for a, b in [(got[1], want[1]), (got[3], want[3])]:  # log-probabilities to float32 rounding
        np.testing.assert_allclose(np.array(a, float), np.array(b, float), atol=2e-4)


@pytest.mark.slow
def test_a_mesh_that_leaves_a_process_out_is_one_line_before_loading(tiny_hf_with_tokenizer, tmp_path):
    """tensor=2 would use process 0's devices alone (process 1 would have nothing to replay on): both
    processes refuse it in one line, before any weight is read (the checkpoint has none)."""
    (tmp_path / "config.json").write_text(open(os.path.join(tiny_hf_with_tokenizer, "config.json")).read())
    procs = processes("neojax.serve", ["--checkpoint", str(tmp_path), "--port", "0", "--mesh", "tensor=2"])
    outs = finish(procs, timeout=120)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 2 and err.startswith("error: --mesh tensor=2: ") and "4 are present" in err, err
        assert err.count("\n") == 1 and "serving" not in out
