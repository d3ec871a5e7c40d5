"""Generation tasks against an independent computation: transformers' greedy generate on the same
prompts with the harness's stop rule, then the harness's own metric code (lm_eval) or sacrebleu /
rouge_score called directly."""
import json
import subprocess
import sys

import numpy as np
import pytest
from support import random_hf_model, reference_generate, write_jsonl

from neojax import checkpoint
from neojax import evaluate as ev
from neojax.evaluate import generation
from neojax.evaluate.harness import Scorer

WORDS = "the quick brown fox jumps over lazy dog once upon a time there was model text token".split()


@pytest.fixture(scope="module")
def long_model(tiny_tokenizer, tmp_path_factory):
    """A random GPT-Neo with room for the harness's 256 new tokens, and its torch twin."""
    torch_model = random_hf_model(seed=3, vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, num_layers=2,
                                  num_heads=4, attention_types=[[["global", "local"], 1]], window_size=16,
                                  max_position_embeddings=384)
    directory = str(tmp_path_factory.mktemp("tiny_hf_long"))
    torch_model.save_pretrained(directory)
    tiny_tokenizer.save(directory)
    return checkpoint.load(directory), torch_model, directory


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


@pytest.mark.slow
def test_generate_until_matches_transformers_and_ignores_batch_size(long_model):
    m, torch_model, _ = long_model
    rng = np.random.default_rng(0)
    requests = [(_sentence(rng, k), until, n) for k, until, n in
                [(3, ["\n"], 40), (9, ["\n"], 40), (5, ["\n\n"], 20), (14, ["e"], 30), (2, [" the"], 60)]]
    expected = [reference_generate(torch_model, m.tokenizer, c, u, n, 384) for c, u, n in requests]
    for batch_size in (1, 4):
        got = Scorer(m.params, m.config, m.tokenizer, batch_size).generate_until(requests)
        assert got == expected
    assert any(len(t) > 10 for t in expected)  # real text was generated, not only stops


@pytest.mark.slow
def test_context_is_left_truncated_to_leave_room_for_max_gen_toks(long_model):
    m, torch_model, _ = long_model
    rng = np.random.default_rng(1)
    long_context = _sentence(rng, 200)  # more tokens than max_len - max_gen_toks
    assert len(m.tokenizer.encode(long_context)) > 100
    got = Scorer(m.params, m.config, m.tokenizer, 2, max_len=120).generate_until([(long_context, ["\n"], 40)])
    assert got == [reference_generate(torch_model, m.tokenizer, long_context, ["\n"], 40, 120)]
    # a task length the context cannot hold: half the context instead, as the harness would with that length
    got = Scorer(m.params, m.config, m.tokenizer, 2, max_len=120).generate_until([(long_context, ["\n"], 120)])
    assert got == [reference_generate(torch_model, m.tokenizer, long_context, ["\n"], 60, 120)]


@pytest.mark.slow
def test_wmt_prompt_fewshot_and_corpus_metrics_match_the_harness(long_model, tmp_path):
    from lm_eval.api.metrics import bleu, chrf, ter
    m, torch_model, _ = long_model
    rng = np.random.default_rng(2)
    docs = [{"translation": {"de": _sentence(rng, 6), "en": _sentence(rng, 7)}} for _ in range(5)]
    pool = [{"translation": {"de": _sentence(rng, 4), "en": _sentence(rng, 4)}} for _ in range(6)]
    write_jsonl(tmp_path, "wmt16-de-en", docs)
    write_jsonl(tmp_path, "wmt16-de-en.train", pool)
    results = ev.evaluate(m.params, m.config, m.tokenizer, ["wmt16-de-en"], str(tmp_path), num_fewshot=2,
                          batch_size=4)["wmt16-de-en"]
    # the prompts, rebuilt: two examples "German phrase: ..\nEnglish phrase:  ..\n\n" then the query
    import random
    rnd = random.Random(1234)
    prompts = []
    for d in docs:
        shots = rnd.sample([p for p in pool if p is not d], 2)
        prompts.append("".join(f"German phrase: {s['translation']['de']}\nEnglish phrase:  {s['translation']['en']}"
                               "\n\n" for s in shots) + f"German phrase: {d['translation']['de']}\nEnglish phrase:")
    preds = [reference_generate(torch_model, m.tokenizer, p, ["\n"], 256, 384) for p in prompts]
    # references the model partly reproduces, so that the scores are not all zero
    refs = [" " + d["translation"]["en"] for d in docs]
    items = list(zip(refs, preds))
    assert results["bleu"] == pytest.approx(bleu(items)) and results["chrf"] == pytest.approx(chrf(items))
    assert results["ter"] == pytest.approx(ter(items)) and results["ter"] > 0 and results["chrf"] > 0
    assert results["n"] == 5 and results["tokens_generated"] > 0


def test_translation_scores_against_sacrebleu_on_known_text():
    import sacrebleu
    refs, preds = [" the cat sat on the mat", " a dog"], ["the cat sat on a mat", "a dog barked"]
    got = generation.corpus_scores(refs, preds)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score) and 0 < got["bleu"] < 100
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert got["ter"] == pytest.approx(sacrebleu.corpus_ter(preds, [refs]).score)


def test_truthfulqa_metrics_match_the_harness_utils():
    from lm_eval.tasks.truthfulqa import utils
    doc = {"question": " Who wrote Hamlet? ", "best_answer": "Shakespeare",
           "correct_answers": ["Shakespeare wrote Hamlet", "William Shakespeare.", "  "],
           "incorrect_answers": ["Marlowe wrote Hamlet", "Bacon wrote it"]}
    processed = utils.preprocess_function(dict(doc))
    assert generation.truthfulqa_prompt(doc).endswith("\n\nQ: Who wrote Hamlet?")
    for completion in (" Shakespeare wrote Hamlet.", " Marlowe wrote it . Then he left.", " I have no comment."):
        ours = generation.truthfulqa_metrics(doc, completion)
        theirs = utils.process_results_gen(processed, [completion])
        assert set(ours) == set(theirs)
        for k in theirs:
            assert ours[k] == pytest.approx(theirs[k]), k


@pytest.mark.slow
def test_truthfulqa_and_cnn_dailymail_end_to_end(long_model, tmp_path):
    from rouge_score import rouge_scorer
    m, torch_model, _ = long_model
    rng = np.random.default_rng(4)
    articles = [{"article": _sentence(rng, 30), "highlights": _sentence(rng, 8)} for _ in range(3)]
    write_jsonl(tmp_path, "cnn_dailymail", articles)
    qa = [{"question": _sentence(rng, 5) + "?", "best_answer": "x", "correct_answers": [_sentence(rng, 3)],
           "incorrect_answers": [_sentence(rng, 3), _sentence(rng, 2)]} for _ in range(3)]
    write_jsonl(tmp_path, "truthfulqa_gen", qa)
    out = ev.evaluate(m.params, m.config, m.tokenizer, ["cnn_dailymail", "truthfulqa_gen"], str(tmp_path),
                      batch_size=2)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    summaries = [reference_generate(torch_model, m.tokenizer,
                                    f"Summarize the following article:\n\n{a['article']}\n\nSummary:", ["\n\n"], 128,
                                    384) for a in articles]
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = np.mean([scorer.score(a["highlights"], " ".join(s.split()))[key].fmeasure
                            for a, s in zip(articles, summaries)])
        assert out["cnn_dailymail"][key] == pytest.approx(expected)
    from lm_eval.tasks.truthfulqa import utils
    completions = [reference_generate(torch_model, m.tokenizer, generation.truthfulqa_prompt(d), ["\n\n"], 256, 384)
                   for d in qa]
    theirs = [utils.process_results_gen(utils.preprocess_function(dict(d)), [c]) for d, c in zip(qa, completions)]
    for key in ("bleu_max", "rouge1_acc", "rougeL_diff"):
        assert out["truthfulqa_gen"][key] == pytest.approx(np.mean([t[key] for t in theirs]))


def test_bad_generation_task_files(long_model, tmp_path):
    m, _, _ = long_model
    write_jsonl(tmp_path, "wmt16-en-ro", [{"translation": {"en": "hello", "ro": "salut"}},
                                     {"translation": {"en": "x", "de": "y"}}])
    with pytest.raises(ValueError, match=r"wmt16-en-ro.jsonl line 2: field 'translation.ro' must be a string"):
        ev.evaluate(m.params, m.config, m.tokenizer, ["wmt16-en-ro"], str(tmp_path))
    (tmp_path / "cnn_dailymail.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no records"):
        ev.evaluate(m.params, m.config, m.tokenizer, ["cnn_dailymail"], str(tmp_path))


@pytest.mark.slow
def test_cli_translation_task_and_bad_pair(long_model, tmp_path):
    _, _, directory = long_model
    write_jsonl(tmp_path, "wmt14-fr-en", [{"translation": {"fr": "bonjour le monde", "en": "hello world"}}] * 2)
    out = tmp_path / "r.json"
    run = lambda *a: subprocess.run([sys.executable, "-m", "neojax.evaluate", "--checkpoint", directory,
                                     "--data_dir", str(tmp_path), *a], capture_output=True, text=True, timeout=300)
    r = run("--tasks", "wmt14-fr-en", "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads(out.read_text())["wmt14-fr-en"]) >= {"bleu", "chrf", "ter"}
    assert "wmt14-fr-en: 2/2 requests" in r.stderr  # progress
    r = run("--tasks", "wmt16-fr-de")
    assert r.returncode == 2 and "unknown task 'wmt16-fr-de'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_generation_fits_a_short_context_and_max_gen_toks_caps_it(tiny_hf_with_tokenizer, tmp_path, capfd):
    """On a 128-token model the harness's 256-token TruthfulQA default cannot run: half the context
    is generated instead (and said); --max_gen_toks sets the length, and one that leaves no prompt
    is refused naming the flag."""
    from neojax import checkpoint
    m = checkpoint.load(tiny_hf_with_tokenizer)
    rng = np.random.default_rng(5)
    qa = [{"question": _sentence(rng, 5) + "?", "best_answer": "x", "correct_answers": [_sentence(rng, 3)],
           "incorrect_answers": [_sentence(rng, 3)]} for _ in range(2)]
    write_jsonl(tmp_path, "truthfulqa_gen", qa)
    out = ev.evaluate(m.params, m.config, m.tokenizer, ["truthfulqa_gen"], str(tmp_path), max_len=128)
    assert "generating up to 64 (set --max_gen_toks)" in capfd.readouterr().err
    assert 0 < out["truthfulqa_gen"]["tokens_generated"] <= 2 * 64
    out = ev.evaluate(m.params, m.config, m.tokenizer, ["truthfulqa_gen"], str(tmp_path), max_gen_toks=3)
    assert 0 < out["truthfulqa_gen"]["tokens_generated"] <= 2 * 3
    with pytest.raises(ValueError, match="--max_gen_toks 128 must be in"):
        ev.evaluate(m.params, m.config, m.tokenizer, ["truthfulqa_gen"], str(tmp_path), max_gen_toks=128)
