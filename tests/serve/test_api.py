"""The app in this process (fastapi's TestClient) on a small engine."""
import re

import pytest
from fastapi.testclient import TestClient
from support import engine_of

from neojax.serve.api import build_app


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
