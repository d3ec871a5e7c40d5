"""Speculative decoding: greedy output is generate's own, token for token, whatever the draft
proposes (the target itself, a random model, 1 or 4 tokens a round), with stop strings and
streaming; sampled tokens are distributed as the target's (chi-square against the exact
marginals the target gives, in float64)."""
import subprocess
import sys

import numpy as np
import pytest
from support import assert_drawn_from_target, peaky_target_and_draft, random_draft

from neojax import checkpoint
from neojax.generate import generate


@pytest.fixture(scope="module")
def model(tiny_hf_with_tokenizer):
    return checkpoint.load(tiny_hf_with_tokenizer)



PROMPTS = ["The quick brown fox", "Once", "def hello():\n    print('hi')\n"]


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("which", ["the target itself", "a random model"])
def test_greedy_output_is_the_targets(model, k, which):
    draft = (model.params, model.config) if which == "the target itself" else random_draft(model.config)
    want = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=40)
    got = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=40, draft=draft,
                   draft_tokens=k)
    assert got.tokens == want.tokens and got.texts == want.texts
    if which == "the target itself":
        assert got.acceptance == 1.0
    else:
        assert got.acceptance < 0.5  # it really was checked, and mostly overruled


@pytest.mark.slow
def test_stop_strings_and_streaming_with_a_draft(model):
    want = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=40)
    stop = next(text[4:6] for text in want.texts if len(text) > 8)
    want = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=40, stop_strings=[stop])
    streamed = {}
    got = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=40, stop_strings=[stop],
                   draft=random_draft(model.config), draft_tokens=3,
                   on_text=lambda row, piece: streamed.__setitem__(row, streamed.get(row, "") + piece))
    assert got.tokens == want.tokens and got.texts == want.texts
    assert all(streamed.get(i, "") == text for i, text in enumerate(want.texts))


@pytest.mark.slow
@pytest.mark.parametrize("n", [5, 7])
def test_streaming_stops_at_max_new_tokens_inside_a_round(model, n):
    """A round of 5 kept tokens overshoots max_new_tokens: the extra ones are neither kept nor streamed."""
    streamed = {}
    got = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=n,
                   draft=(model.params, model.config), draft_tokens=4,
                   on_text=lambda row, piece: streamed.__setitem__(row, streamed.get(row, "") + piece))
    want = generate(model.params, model.config, PROMPTS, model.tokenizer, max_new_tokens=n)
    assert got.tokens == want.tokens and all(len(t) == n for t in got.tokens)
    assert [streamed.get(i, "") for i in range(len(PROMPTS))] == want.texts


def test_a_draft_must_share_the_vocabulary_and_penalties_are_refused(model):
    params, config = random_draft(model.config)
    other = config.replace(vocab_size=config.vocab_size + 1)
    with pytest.raises(ValueError, match="must share the target's tokenizer"):
        generate(model.params, model.config, PROMPTS, model.tokenizer, draft=(params, other))
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate(model.params, model.config, PROMPTS, model.tokenizer, draft=(params, config), repetition_penalty=1.2)


@pytest.mark.slow
def test_sampled_tokens_are_distributed_as_the_targets():
    """4096 rows sample 3 tokens after one prompt with a draft that disagrees often; tokens 2 and 3
    come from proposals kept or the residual draw. Their counts are tested against the target's
    exact marginals (float64 softmax of its logits over every prefix), and would fail against the
    draft's own."""
    params, config, draft, prompt = peaky_target_and_draft()
    rows = 4096
    out = generate(params, config, [prompt] * rows, max_new_tokens=3, temperature=1.0, seed=11, draft=draft,
                   draft_tokens=2, stop_tokens=())
    tokens = np.array(out.tokens)
    assert tokens.shape == (rows, 3) and 0 < out.acceptance < 0.9
    assert_drawn_from_target(tokens, params, config, draft, prompt)


@pytest.mark.slow
def test_cli_draft(tiny_hf_with_tokenizer, tmp_path):
    from neojax.checkpoint.hf import save_hf
    model = checkpoint.load(tiny_hf_with_tokenizer)
    params, config = random_draft(model.config)
    draft_dir = str(tmp_path / "draft")
    save_hf(draft_dir, params, config, model.tokenizer)
    argv = [sys.executable, "-m", "neojax.generate", "--checkpoint", tiny_hf_with_tokenizer, "--prompt", "Once upon",
            "--prompt", "def", "--max_new_tokens", "20"]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    drafted = subprocess.run(argv + ["--draft", draft_dir, "--draft_tokens", "3"], capture_output=True, text=True,
                             timeout=300)
    assert plain.returncode == drafted.returncode == 0, drafted.stderr[-2000:]
    assert drafted.stdout == plain.stdout and "--- [1.0] ---" in plain.stdout
    assert "draft kept" in drafted.stderr
    refused = subprocess.run(argv + ["--draft", draft_dir, "--repetition_penalty", "1.3"], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "repetition_penalty" in refused.stderr
