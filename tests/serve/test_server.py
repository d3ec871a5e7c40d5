"""The server through the official `openai` client: completions, chat, streaming, logprobs, echo,
errors; greedy outputs equal `neojax.generate.generate` on the same prompts."""
import json
import socket
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import numpy as np
import openai
import pytest
from support import Server

from neojax.finetune.chat import STOP, render_prompt
from neojax.generate import generate
from neojax.model import GPTNeo

PROMPTS = ["The quick brown fox", "Once upon a time, there was", "def hello():\n", "GPT-Neo generates text"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def expected(tiny, prompt, max_tokens, stop=()):
    return generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=max_tokens,
                    stop_strings=list(stop)).texts[0]


@pytest.mark.slow
def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 4


def test_greedy_completions_equal_generate(client, tiny):
    out = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=20, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for prompt, choice in zip(PROMPTS, out.choices):
        assert choice.text == expected(tiny, prompt, 20)
        assert choice.finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == sum(len(tiny.tokenizer.encode(p)) for p in PROMPTS)
    assert 0 < out.usage.completion_tokens <= 80


def test_stop_strings_cut_the_text(client, tiny):
    full = expected(tiny, PROMPTS[0], 30)
    stop = full[5:7]
    out = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=30, temperature=0, stop=[stop])
    assert out.choices[0].text == expected(tiny, PROMPTS[0], 30, [stop]) == full[:full.find(stop)]
    assert out.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_echo_logprobs_of_token_prompts_match_the_model(client, tiny):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, tiny.config.vocab_size, n).tolist() for n in (5, 40, 23)]  # crosses 16-token chunks
    out = client.completions.create(model="tiny", prompt=prompts, max_tokens=1, temperature=0, echo=True, logprobs=1)
    for ids, choice in zip(prompts, sorted(out.choices, key=lambda c: c.index)):
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
        logits = np.asarray(GPTNeo(tiny.config).apply({"params": tiny.params}, np.array([ids])), np.float64)[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
            logits.max(-1, keepdims=True)
        np.testing.assert_allclose(lp.token_logprobs[1:len(ids)], [logp[i, ids[i + 1]] for i in range(len(ids) - 1)],
                                   rtol=1e-4, atol=1e-5)
        for i, top in enumerate(lp.top_logprobs[1:len(ids)]):
            assert max(top.values()) == pytest.approx(logp[i].max(), abs=1e-4)
        assert lp.tokens[:len(ids)] == [tiny.tokenizer.decode([t]) for t in ids]
        assert lp.text_offset[:2] == [0, len(lp.tokens[0])]
        assert choice.text.startswith(tiny.tokenizer.decode(ids))


def test_streaming_equals_the_whole_answer(client, tiny):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=24, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected(tiny, PROMPTS[1], 24)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_uses_the_chat_template(client, tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
    want = expected(tiny, render_prompt(messages), 16, [STOP]).lstrip()
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == want
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want


def test_the_server_samples_what_generate_samples(client, tiny):
    """One sampler: choice j of a request with seed S is what `generate` draws for row j with seed S."""
    kw = dict(temperature=1.3, top_k=40, top_p=0.9)
    out = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=10, seed=11, n=2,
                                    temperature=kw["temperature"], top_p=kw["top_p"], extra_body={"top_k": 40})
    want = generate(tiny.params, tiny.config, [PROMPTS[1]] * 2, tiny.tokenizer, max_new_tokens=10, seed=11, **kw)
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == want.texts
    assert want.texts[0] != want.texts[1]


def test_sampling_n_and_seed(client):
    a = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=12, temperature=1.0, n=3, seed=7)
    b = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=12, temperature=1.0, n=3, seed=7)
    assert len(a.choices) == 3 and [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # each choice draws its own stream


BAD = [
    (dict(prompt="x", max_tokens=-1), "max_tokens"),
    (dict(prompt="x", max_tokens=500), "max_tokens"),
    (dict(prompt=[1] * 200, max_tokens=1), "prompt"),
    (dict(prompt="x", temperature=-0.5), "temperature"),
    (dict(prompt="x", top_p=0), "top_p"),
    (dict(prompt="x", top_p=1.5), "top_p"),
    (dict(prompt="x", n=100), "n"),
    (dict(prompt="x", logprobs=9), "logprobs"),
    (dict(prompt="x", max_tokens="ten"), "max_tokens"),
    (dict(prompt=[[1, 2], [99999]]), "prompt"),
    (dict(prompt={"text": "x"}), "prompt"),
    (dict(), "prompt"),
    (dict(prompt="x", top_k=2 ** 62), "top_k"),  # once an overflow inside the step that ended every stream
    (dict(prompt="x", logit_bias={"1": 5}), "logit_bias"),  # accepted and ignored before
    (dict(prompt="x", suffix="!"), "suffix"),
    (dict(prompt="x", tools=[]), "tools"),
    (dict(prompt="x", response_format={"type": "json_object"}), "response_format"),
    (dict(prompt="x", max_token=5), "max_token"),  # a misspelt field
    (dict(prompt="x", stream_options={"include_usage": True}), "stream_options"),  # without stream
    (dict(prompt="x", stream=True, stream_options=True), "stream_options"),
    (dict(prompt="x", stream=True, logprobs=1), "logprobs"),  # every chunk said null before
]


@pytest.mark.parametrize("fields,param", BAD, ids=[p + str(i) for i, (_, p) in enumerate(BAD)])
def test_bad_completion_requests_are_400_naming_the_field(server, fields, param):
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", **fields}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_every_error_has_the_openai_shape(server):
    def error(r, status):
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert e["message"] and e["type"] and "param" in e and "code" in e
        return e
    assert "endpoints" in error(httpx.get(server.url + "/v1/nothing", timeout=60), 404)["message"]
    error(httpx.get(server.url + "/v1/completions", timeout=60), 405)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    assert error(httpx.post(server.url + "/v1/chat/completions", json={**chat, "top_logprobs": 2}, timeout=60),
                 400)["param"] == "top_logprobs"
    long = {**chat, "messages": [{"role": "user", "content": "the quick brown fox " * 20}], "max_tokens": 100}
    assert error(httpx.post(server.url + "/v1/chat/completions", json=long, timeout=60),
                 400)["code"] == "context_length_exceeded"  # OpenAI's code: the chat page drops old turns on it
    big = b'{"prompt": "' + b"x" * (5 << 20) + b'"}'  # over the 4 MiB default: refused before it is read
    assert "max_request_bytes" in error(httpx.post(server.url + "/v1/completions", content=big, timeout=60),
                                        413)["message"]
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=60) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # a request uvicorn cannot parse
        answer = raw.makefile("rb").read().decode()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "application/json" in head, answer
    assert json.loads(body)["error"]["message"].startswith("malformed HTTP request")
    assert httpx.get(server.url + "/health", timeout=60).json()["status"] == "ok"


def test_hostile_bodies_are_400_and_every_request_is_logged(server):
    url = server.url + "/v1/completions"
    r = httpx.post(url, content=b'{"model": "tiny", "prompt": "a\\ud800b"}', timeout=60)  # a lone surrogate
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    chat = b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}'
    r = httpx.post(server.url + "/v1/chat/completions", content=chat, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    deep = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(url, content=deep, timeout=60)
    assert r.status_code == 400 and "nests too deeply" in r.json()["error"]["message"], r.text
    r = httpx.post(url, json={"model": "tiny", "prompt": "log me", "max_tokens": 3}, timeout=60)
    request_id = r.json()["id"]
    deadline = time.time() + 10
    while not any(request_id in line for line in server.lines) and time.time() < deadline:
        time.sleep(0.1)
    line = next(line for line in server.lines if request_id in line)
    assert "tokens in, 3 out" in line and "finish length" in line, line
    httpx.get(server.url + "/no/such/path/" + "x" * 50, timeout=60)
    before = len(server.lines)
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=60) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"prompt\": ")  # then gone, mid-body
    time.sleep(1)
    assert httpx.get(server.url + "/health", timeout=60).json()["status"] == "ok"
    assert not any("Traceback" in line for line in server.lines[before:]), server.lines[before:]
    from prometheus_client.parser import text_string_to_metric_families  # the Prometheus project's own parser
    text = httpx.get(server.url + "/metrics", timeout=60).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text)
               for s in family.samples}
    assert samples[("neojax_requests_total", (("path", "/v1/completions"), ("status", "200")))] >= 1
    assert samples[("neojax_requests_total", (("path", "/v1/completions"), ("status", "400")))] >= 3
    assert samples[("neojax_requests_total", (("path", "other"), ("status", "404")))] >= 1  # no label per path sent
    assert samples[("neojax_tokens_total", (("kind", "completion"),))] >= 3
    assert samples[("neojax_request_seconds_count", ())] >= 1 and ("neojax_queue_length", ()) in samples


@pytest.mark.slow
def test_an_api_key_is_required_when_set_and_port_0_is_announced(tiny_hf_with_tokenizer):
    s = Server(tiny_hf_with_tokenizer, "--max_batch", "2", "--model_name", "tiny", "--api_key", "s3cret", "--port",
               "0")
    try:
        assert not s.url.endswith(":0")
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(s.url + "/v1/completions", json=body, headers=headers, timeout=60)
            assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error", r.text
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret")
        assert client.completions.create(**body).choices[0].text is not None
        assert httpx.get(s.url + "/health", timeout=60).status_code == 200  # for load balancers
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("flags,named", [(["--port", "{busy}"], "--port"), (["--host", "no-such-host.invalid"],
                                                                          "--host")])
@pytest.mark.slow
def test_a_port_in_use_or_a_bad_host_is_one_line_before_loading(tiny_hf_with_tokenizer, flags, named):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        flags = [f.format(busy=busy.getsockname()[1]) for f in flags]
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "neojax.serve", "--checkpoint", tiny_hf_with_tokenizer, *flags],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {named}") and r.stderr.count("\n") == 1, r.stderr
    assert "compiling" not in r.stdout and time.perf_counter() - start < 30


def test_malformed_json_unknown_model_and_bad_messages(server, client):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="x")
    for messages in ([], [{"role": "robot", "content": "x"}], [{"role": "user"}]):
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert client.completions.create(model="tiny", prompt="still", max_tokens=2).choices  # still serving


def test_a_client_that_disconnects_frees_its_slot(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": "x", "max_tokens": 120, "stream": True, "temperature": 1}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    deadline = time.time() + 5
    while httpx.get(server.url + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["running"] == 0


def test_full_queue_is_429_and_the_rest_complete(server):
    codes = []

    def one():
        r = httpx.post(server.url + "/v1/completions", timeout=120,
                       json={"model": "tiny", "prompt": "x", "max_tokens": 30, "n": 16, "temperature": 1})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "rate_limit_error"
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}


def test_chat_page_is_self_contained(server):
    page = httpx.get(server.url + "/").text
    assert "<script>" in page and "/v1/chat/completions" in page and "tiny" in page
    assert "http://" not in page and "https://" not in page  # no external assets


@pytest.mark.slow
def test_sigterm_ends_running_streams_with_a_finish_reason(tiny_hf_with_tokenizer):
    s = Server(tiny_hf_with_tokenizer, "--max_batch", "2", "--chunk", "16", "--model_name", "t")
    finishes, started = [], threading.Event()

    def stream():
        with httpx.stream("POST", s.url + "/v1/completions", timeout=60, json={
                "model": "t", "prompt": "x", "max_tokens": 120, "n": 8, "stream": True, "temperature": 1}) as r:
            for line in r.iter_lines():
                started.set()
                if '"finish_reason": "' in line:
                    finishes.append(line)
    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    assert s.stop() == 0  # SIGTERM while 8 sequences share 2 slots
    t.join(timeout=30)
    assert not t.is_alive() and len(finishes) == 8  # every choice ended with a finish reason
    assert any('"abort"' in f for f in finishes)
