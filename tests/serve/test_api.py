"""The app in this process (fastapi's TestClient) on a small engine."""
import json
import re

import pytest
from fastapi.testclient import TestClient
from support import engine_of

from neojax.serve.api import build_app


@pytest.mark.slow
@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_is_a_line_per_request_and_can_be_turned_off(tiny, access_log, capsys):
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=1, chunk=8)
    engine.start()
    try:
        client = TestClient(build_app(engine, "tiny", access_log=access_log))
        for stream in (False, True):
            body = {"model": "tiny", "prompt": "Once upon", "max_tokens": 3, "temperature": 0, "stream": stream}
            assert client.post("/v1/completions", json=body).status_code == 200
        metrics = client.get("/metrics").text
    finally:
        engine.shutdown()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("request ")]
    assert len(lines) == (2 if access_log else 0)
    assert all(re.fullmatch(r"request cmpl-\w+: \d+ tokens in, 3 out, [\d.]+s, finish length", line) for line in lines)
    assert 'neojax_tokens_total{kind="completion"} 6' in metrics  # counted either way


def test_inputs_the_server_cannot_honour_are_refused_and_every_request_is_logged(tiny, capsys):
    """Nothing silently dropped: a key given twice, max_tokens against max_completion_tokens, a seed
    outside 32 bits are 400s naming the field; the scheme of the Authorization header is
    case-insensitive (RFC 7235); offsets count characters of the returned text, also where a
    character spans tokens; a refused request has its access-log line too."""
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=1, chunk=8)
    engine.start()
    try:
        client = TestClient(build_app(engine, "tiny", api_key="sesame"))
        key = {"Authorization": "bearer sesame", "Content-Type": "application/json"}
        post = lambda path, raw: client.post(path, content=raw, headers=key)
        refused = {
            '{"prompt": "a", "max_tokens": 1, "max_tokens": 2}': ("max_tokens", "given twice"),
            '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "max_completion_tokens": 3}':
                ("max_completion_tokens", "disagree"),
            '{"prompt": "a", "max_tokens": 1, "seed": 4294967296}': ("seed", "seed"),
            '{"prompt": "a", "max_tokens": 1, "seed": -1}': ("seed", "seed"),
        }
        for raw, (param, words) in refused.items():
            path = "/v1/chat/completions" if "messages" in raw else "/v1/completions"
            error = post(path, raw).json()["error"]
            assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
        same = post("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
                    '"max_completion_tokens": 2, "temperature": 0}')
        assert same.status_code == 200 and same.json()["usage"]["completion_tokens"] <= 2
        assert client.post("/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Basic sesame"}
                           ).status_code == 401
        text = "café ☕ naïve — 東京"
        r = post("/v1/completions", '{"prompt": ' + json.dumps(text) + ', "max_tokens": 4, "temperature": 0, '
                 '"echo": true, "logprobs": 1}')
        choice = r.json()["choices"][0]
        offsets, tokens = choice["logprobs"]["text_offset"], choice["logprobs"]["tokens"]
        assert choice["text"].startswith(text) and offsets == sorted(offsets) and offsets[-1] < len(choice["text"])
        assert any("\ufffd" in t for t in tokens)  # a character spread over tokens: the case that drifted
        for offset, token in zip(offsets, tokens):
            if "\ufffd" not in token:
                assert choice["text"][offset:offset + len(token)] == token
    finally:
        engine.shutdown()
    refusals = [line for line in capsys.readouterr().out.splitlines() if line.startswith("request refused")]
    assert refusals.count("request refused: POST /v1/completions 400") == 3 and len(refusals) == 5  # and the 401
