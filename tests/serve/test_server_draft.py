"""`neojax.serve --draft`: speculative decoding behind the API. Greedy completions (several at once,
streamed or not) are what the server without a draft gives; /health and /metrics count the
proposals; a draft that cannot serve is one line before serving."""
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest
from support import Server, exit_of, random_hf_model, saved_hf_model

PROMPTS = ["The quick brown fox", "Once upon a time, there was", "def hello():\n", "GPT-Neo generates text"]
FLAGS = ["--max_batch", "4", "--chunk", "16", "--model_name", "tiny"]


@pytest.fixture(scope="module")
def small_draft(tiny_tokenizer, tmp_path_factory):
    """A 1-layer random model with the tiny model's tokenizer: it proposes, and is mostly overruled."""
    return saved_hf_model(tmp_path_factory.mktemp("draft"), tiny_tokenizer, seed=5, hidden_size=16, num_layers=1,
                          num_heads=2, attention_types=[[["global"], 1]], max_position_embeddings=128)


def completions(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    one = lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=24, temperature=0).choices[0].text
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, PROMPTS))
    stream = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0, stream=True)
    return texts, "".join(c.choices[0].text for c in stream if c.choices)


@pytest.mark.slow
def test_a_draft_changes_no_greedy_completion(server, tiny_hf_with_tokenizer, small_draft):
    want = completions(server.url)  # the package's server: these flags, no draft
    drafted = Server(tiny_hf_with_tokenizer, *FLAGS, "--draft", small_draft, "--draft_tokens", "3")
    try:
        got = completions(drafted.url)
        health = httpx.get(drafted.url + "/health").json()
        metrics = httpx.get(drafted.url + "/metrics").text
    finally:
        assert drafted.stop() == 0, "".join(drafted.lines)
    assert got == want
    assert 0 <= health["draft_kept"] < health["draft_proposed"] and health["compilations"] == 0
    assert f"neojax_draft_proposed_tokens_total {health['draft_proposed']}" in metrics
    assert any("3 drafted tokens a step" in line for line in drafted.lines)


@pytest.mark.parametrize("flags,named", [
    (["--draft_tokens", "3"], "--draft_tokens is how many tokens --draft proposes"),
    (["--draft", "{draft}", "--draft_tokens", "20"], "--draft_tokens 20: draft_tokens=20: propose between 1 and 16"),
    (["--draft", "{other}"], "--draft {other}: the draft model has a 512-token vocabulary"),
])
@pytest.mark.slow
def test_a_draft_that_cannot_serve_is_one_line(tiny_hf_with_tokenizer, small_draft, tmp_path, flags, named, capsys):
    other = tmp_path / "other"  # a model whose vocabulary is not the tiny tokenizer's
    random_hf_model(vocab_size=512, hidden_size=16, num_layers=1, num_heads=2, attention_types=[[["global"], 1]],
                    max_position_embeddings=128).save_pretrained(other)
    places = {"draft": small_draft, "other": str(other)}
    argv = [f.format(**places) for f in flags]
    from neojax.serve.__main__ import main
    code, err = exit_of(main, ["--checkpoint", tiny_hf_with_tokenizer, "--port", "0", *argv], capsys)
    assert code == 2 and err.startswith(f"error: {named.format(**places)}") and err.count("\n") == 1, err
