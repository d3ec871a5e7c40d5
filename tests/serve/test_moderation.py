"""The moderation gate: a classifier trained here (neojax's classification fine-tuning on a tiny
synthetic set) refuses a prompt it scores high and passes one it scores low; /v1/moderations equals
the classifier's own scores (transformers); a flagged output is cut with finish_reason
content_filter; without --moderation nothing of the gate exists."""
import json
import subprocess
import sys

import httpx2 as httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from support import Server, device_env, engine_of, exit_of

from neojax.generate import generate
from neojax.serve.api import build_app

pytestmark = pytest.mark.slow  # trains a classifier and starts a server

HOSTILE = ["zap", "zorp", "grix", "vex", "krull"]
CALM = ["calm", "sunny", "garden", "tea", "quiet"]


def write_examples(path, n, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            toxic = int(rng.integers(0, 2))
            words = rng.choice(HOSTILE if toxic else CALM, size=int(rng.integers(2, 6)))
            f.write(json.dumps({"text": "they said " + " ".join(words), "label": ["ok", "toxic"][toxic]}) + "\n")


@pytest.fixture(scope="module")
def classifier(tiny_hf_with_tokenizer, tmp_path_factory):
    """The gate, made the way experiments/moderation.py makes one: the classify objective."""
    tmp = tmp_path_factory.mktemp("gate")
    write_examples(tmp / "train.jsonl", 256, 0)
    write_examples(tmp / "valid.jsonl", 32, 1)
    r = subprocess.run([sys.executable, "-m", "neojax.train", "--config", "moderation", "--workdir", str(tmp / "run"),
                        f"--config.model.init_from={tiny_hf_with_tokenizer}",
                        f"--config.classify.train={tmp / 'train.jsonl'}",
                        f"--config.classify.valid={tmp / 'valid.jsonl'}",
                        "--config.classify.labels=[\"ok\",\"toxic\"]",
                        "--config.data.seq_len=32", "--config.train.total_steps=100", "--config.train.log_every=50",
                        "--config.optimizer.lr=3e-3", "--config.optimizer.warmup_steps=5",
                        "--config.eval.every_steps=100"], capture_output=True, text=True, timeout=600,
                       env=device_env(1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp / "run" / "report.json").read_text())["accuracy"] >= 0.95
    return str(tmp / "run" / "hf")


@pytest.fixture(scope="module")
def gated(tiny_hf_with_tokenizer, classifier):
    s = Server(tiny_hf_with_tokenizer, "--max_batch", "2", "--chunk", "16", "--model_name", "tiny",
               "--moderation", classifier, "--moderation_threshold", "0.5")
    yield s
    assert s.stop() == 0, "".join(s.lines)


def test_the_gate_refuses_a_flagged_prompt_and_passes_a_calm_one_unchanged(gated, tiny):
    client = openai.OpenAI(base_url=gated.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="they said zap zorp vex", max_tokens=4)
    assert e.value.code == "content_filter" and "moderation gate" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "they said grix krull"}],
                                       max_tokens=4)
    assert e.value.code == "content_filter" and e.value.param == "messages"
    calm = "they said calm garden tea"
    out = client.completions.create(model="tiny", prompt=calm, max_tokens=6, temperature=0)
    text = generate(tiny.params, tiny.config, [calm], tiny.tokenizer, max_new_tokens=6).texts[0]
    # the output gate may cut it (a random model's words); what it shows is the model's own text
    assert text.startswith(out.choices[0].text)
    assert out.choices[0].finish_reason in ("length", "stop", "content_filter")


def test_moderations_endpoint_returns_the_classifiers_own_scores(gated, classifier):
    import torch
    import transformers

    from neojax.data.tokenizer import Tokenizer
    texts = ["they said zap zorp vex", "they said calm garden tea", "hello there"]
    r = httpx.post(gated.url + "/v1/moderations", json={"input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    model = transformers.GPTNeoForSequenceClassification.from_pretrained(classifier).eval()
    tok = Tokenizer.from_path(classifier)
    assert body["model"] == "hf" and len(body["results"]) == 3
    for text, result in zip(texts, body["results"]):
        with torch.no_grad():
            p = torch.softmax(model(input_ids=torch.tensor([tok.encode(text)])).logits[0].double(), -1).numpy()
        assert set(result["category_scores"]) == {"toxic"}  # the safe label ("ok") is no category
        assert result["category_scores"]["toxic"] == pytest.approx(p[1], abs=1e-4)
        assert result["flagged"] == (p[1] > 0.5) == result["categories"]["toxic"]
    assert [r["flagged"] for r in body["results"][:2]] == [True, False]
    one = httpx.post(gated.url + "/v1/moderations", json={"input": "they said zap"}, timeout=60).json()
    assert len(one["results"]) == 1 and one["results"][0]["flagged"]
    bad = httpx.post(gated.url + "/v1/moderations", json={"input": []}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    doc = httpx.get(gated.url + "/openapi.json", timeout=60).json()
    assert "/v1/moderations" in doc["paths"] and "content_filter" in json.dumps(doc["components"]["schemas"])


class Flags:
    """A stand-in gate that flags any text containing `word` (the cut's mechanics, exactly)."""

    def __init__(self, word):
        self.word, self.threshold, self.name = word, 0.5, "stand-in"

    def score(self, texts):
        return [{"flagged": self.word in t, "flag_score": float(self.word in t), "scores": {}} for t in texts]


@pytest.mark.parametrize("stream", [False, True])
def test_a_flagged_output_is_cut_before_the_flagged_piece(tiny, stream):
    prompt = "The quick brown fox"
    full = generate(tiny.params, tiny.config, [prompt], tiny.tokenizer, max_new_tokens=48, stop_tokens=()).texts[0]
    word = full[len(full) // 2:len(full) // 2 + 4]
    assert word and word not in full[:len(full) // 2]
    engine = engine_of(tiny.params, tiny.config, tiny.tokenizer, max_batch=2, chunk=16)
    engine.warm_up()
    engine.start()
    try:
        client = TestClient(build_app(engine, "tiny", moderator=Flags(word), moderate=("outputs",)))
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 48, "temperature": 0, "stream": stream}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200
        if stream:
            chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
            reason = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        else:
            text, reason = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
        assert reason == "content_filter"
        assert full.startswith(text) and word not in text and len(text) < full.index(word) + len(word)
        # only outputs are gated here: a prompt holding the word passes
        assert client.post("/v1/completions", json={**body, "prompt": prompt + " " + word}).status_code == 200
        assert engine.busy()["running"] == 0
    finally:
        engine.shutdown()


def test_without_the_gate_nothing_of_it_exists(server):
    assert httpx.post(server.url + "/v1/moderations", json={"input": "x"}, timeout=60).status_code == 404
    doc = httpx.get(server.url + "/openapi.json", timeout=60).json()
    assert "/v1/moderations" not in doc["paths"]


def test_gate_flags_without_a_classifier_are_one_line(tiny_hf_with_tokenizer, capsys):
    from neojax.serve.__main__ import main
    serve = lambda *flags: exit_of(main, ["--checkpoint", tiny_hf_with_tokenizer, "--port", "0", *flags], capsys)
    code, err = serve("--moderation_threshold", "0.3")
    assert code == 2 and err.strip().splitlines() == [
        "error: --moderation_threshold sets the moderation gate; add --moderation CLASSIFIER (or drop it)"]
    code, err = serve("--moderation", tiny_hf_with_tokenizer)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --moderation {tiny_hf_with_tokenizer} holds a GPTNeoForCausalLM, not a classifier; give the hf/ "
        "folder of a classification fine-tuning (experiments/moderation.py)"]


def test_a_workdir_given_as_the_gate_is_named(tmp_path):
    from neojax.errors import UsageError
    from neojax.serve.moderation import Moderator
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "hf").mkdir()
    with pytest.raises(UsageError, match=f"is a training workdir; give the classifier it exported, its hf/ folder "
                                         f"\\(this run's is {tmp_path}/hf\\)"):
        Moderator.load(str(tmp_path))
