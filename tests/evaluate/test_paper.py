"""Harness definitions checked against an independent, unbatched torch computation with
transformers on a tiny random model."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from support import ref_loglikelihood, torch_logprobs, write_jsonl

from neojax import checkpoint
from neojax import evaluate as ev
from neojax.evaluate.harness import Scorer
from neojax.evaluate.paper import hellaswag_clean, wikitext_detokenize

SENTENCES = ["The quick brown fox jumps over the lazy dog", "Once upon a time there was a model",
             "GPT-Neo generates text one token at a time", "def hello(): print('hi')"]


@pytest.fixture(scope="module")
def model(tiny_hf_with_tokenizer):
    import transformers
    m = checkpoint.load(tiny_hf_with_tokenizer)
    torch_model = transformers.GPTNeoForCausalLM.from_pretrained(tiny_hf_with_tokenizer, attn_implementation="eager")
    return m, torch_model.eval()


def ref_rolling(torch_model, tok, text, max_len):
    """Every token scored once: the first window after EOS, each later window predicting up to
    max_len new tokens from the max_len tokens before its last one."""
    tokens = tok.encode(text)
    total, start = 0.0, 0
    while start < len(tokens):
        end = min(start + max_len, len(tokens))
        inputs = ([tok.eos_id] + tokens)[max(end - max_len, 0):end]  # position p of [eos]+tokens predicts tokens[p]
        lp = torch_logprobs(torch_model, inputs)
        offset = max(end - max_len, 0)
        total += sum(lp[p - offset, tokens[p]] for p in range(start, end))
        start = end
    return total


def test_lambada_matches_reference_and_ignores_batch_size(model, tmp_path):
    m, torch_model = model
    docs = [{"text": s} for s in SENTENCES] + [{"text": "x " * 80 + "end"}]  # the last one is left truncated
    write_jsonl(tmp_path, "lambada_openai", docs)
    refs = [ref_loglikelihood(torch_model, m.tokenizer, d["text"].rsplit(" ", 1)[0], " " + d["text"].rsplit(" ", 1)[1],
                              48) for d in docs]
    runs = [ev.evaluate(m.params, m.config, m.tokenizer, ["lambada_openai"], str(tmp_path), batch_size=b, max_len=48)
            for b in (1, 3)]
    assert runs[0]["lambada_openai"]["acc"] == runs[1]["lambada_openai"]["acc"]
    # mean log-likelihoods agree to float32 rounding (the perplexity of random weights is ~1e11: exp magnifies it)
    assert math.log(runs[0]["lambada_openai"]["perplexity"]) == pytest.approx(
        math.log(runs[1]["lambada_openai"]["perplexity"]), abs=1e-5)
    r = runs[0]["lambada_openai"]
    assert r["acc"] == pytest.approx(np.mean([g for _, g in refs]))
    assert r["perplexity"] == pytest.approx(math.exp(-np.mean([ll for ll, _ in refs])), rel=1e-4)
    assert r["n"] == len(docs) and r["acc_stderr"] >= 0


def test_trailing_space_and_empty_context_rules(model):
    m, torch_model = model
    scorer = Scorer(m.params, m.config, m.tokenizer, batch_size=2)
    pairs = [("The quick brown ", "fox jumps"), ("", "Once upon a time"), ("GPT-Neo", " generates")]
    for (ll, greedy), pair in zip(scorer.loglikelihood(pairs), pairs):
        ref_ll, ref_greedy = ref_loglikelihood(torch_model, m.tokenizer, *pair, m.config.max_position_embeddings)
        assert ll == pytest.approx(ref_ll, abs=1e-3) and greedy == ref_greedy


def test_wikitext_detokeniser():
    page = (' = = Early life = = \n He was born in 1 @,@ 234 and ( in the city ) said " yes " ; '
            'it was 3 @.@ 5 @-@ 4 . \n')
    assert wikitext_detokenize(page) == (' == Early life ==\nHe was born in 1,234 and (in the city) said "yes"; '
                                         'it was 3.5-4.\n')
    assert wikitext_detokenize("the dog 's toy , N years") == "the dog's toy, 1 years"


def test_wikitext_rolling_windows_score_every_token_once(model, tmp_path):
    m, torch_model = model
    pages = [" = Heading = \n " + " ".join(SENTENCES) + " . \n", " " + " ".join(SENTENCES[::-1]) * 2 + " \n"]
    write_jsonl(tmp_path, "wikitext", [{"page": p} for p in pages])
    r = ev.evaluate(m.params, m.config, m.tokenizer, ["wikitext"], str(tmp_path), max_len=16, batch_size=4)["wikitext"]
    total = sum(ref_rolling(torch_model, m.tokenizer, wikitext_detokenize(p), 16) for p in pages)
    words = sum(len(__import__("re").split(r"\s+", p)) for p in pages)
    n_bytes = sum(len(p.encode()) for p in pages)
    assert r["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert r["bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-4)
    # One long window equals a single forward pass over EOS + text.
    text = wikitext_detokenize(pages[1])
    one = Scorer(m.params, m.config, m.tokenizer).loglikelihood_rolling([text])[0]
    assert one == pytest.approx(ref_rolling(torch_model, m.tokenizer, text, 128), abs=1e-3)


def _mc_reference(torch_model, tok, contexts, choices, golds):
    acc, norm = [], []
    for ctx, chs, gold in zip(contexts, choices, golds):
        ll = np.array([ref_loglikelihood(torch_model, tok, ctx, " " + c, 128)[0] for c in chs])
        acc.append(np.argmax(ll) == gold)
        norm.append(np.argmax(ll / np.array([len(c) for c in chs])) == gold)
    return np.mean(acc), np.mean(norm)


def test_hellaswag_and_piqa(model, tmp_path):
    m, torch_model = model
    hs = [{"activity_label": "Cooking", "ctx_a": "A man stands in the kitchen.",
           "ctx_b": "he [header] picks up a knife",
           "endings": ["and cuts the bread.", "[title] jumps over the  lazy dog.", "once upon a time.", "def hello"],
           "label": i % 4} for i in range(6)]
    piqa = [{"goal": s, "sol1": SENTENCES[(i + 1) % 4], "sol2": "a much longer and rather odd answer " + s,
             "label": i % 2} for i, s in enumerate(SENTENCES)]
    write_jsonl(tmp_path, "hellaswag", hs)
    write_jsonl(tmp_path, "piqa", piqa)
    r = ev.evaluate(m.params, m.config, m.tokenizer, ["hellaswag", "piqa"], str(tmp_path), batch_size=5)
    assert hellaswag_clean("he [header] picks up [title] the  knife") == "he picks up. the knife"
    ctx = [hellaswag_clean(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize()) for d in hs]
    acc, norm = _mc_reference(torch_model, m.tokenizer, ctx, [[hellaswag_clean(e) for e in d["endings"]] for d in hs],
                              [d["label"] for d in hs])
    assert (r["hellaswag"]["acc"], r["hellaswag"]["acc_norm"]) == (pytest.approx(acc), pytest.approx(norm))
    acc, norm = _mc_reference(torch_model, m.tokenizer, [f"Question: {d['goal']}\nAnswer:" for d in piqa],
                              [[d["sol1"], d["sol2"]] for d in piqa], [d["label"] for d in piqa])
    assert (r["piqa"]["acc"], r["piqa"]["acc_norm"]) == (pytest.approx(acc), pytest.approx(norm))


def test_winogrande_partial_scoring_and_fewshot(model, tmp_path):
    m, torch_model = model
    docs = [{"sentence": "The fox jumped over the dog because _ was quick.", "option1": "the fox",
             "option2": "the dog", "answer": "1"},
            {"sentence": "Once upon a time _ wrote a model.", "option1": "GPT-Neo", "option2": "the fox",
             "answer": "2"}]
    write_jsonl(tmp_path, "winogrande", docs)
    write_jsonl(tmp_path, "winogrande.train", docs * 2)
    r = ev.evaluate(m.params, m.config, m.tokenizer, ["winogrande"], str(tmp_path))["winogrande"]
    expected = []
    for d in docs:
        i = d["sentence"].index("_")
        target = " " + d["sentence"][i + 1:].strip()
        lls = [ref_loglikelihood(torch_model, m.tokenizer, d["sentence"][:i] + d[f"option{k}"], target, 128)[0]
               for k in (1, 2)]
        expected.append(np.argmax(lls) == int(d["answer"]) - 1)
    assert r["acc"] == pytest.approx(np.mean(expected))
    few = [ev.evaluate(m.params, m.config, m.tokenizer, ["winogrande"], str(tmp_path), num_fewshot=2)["winogrande"]
           for _ in range(2)]
    assert few[0]["acc"] == few[1]["acc"] and few[0]["num_fewshot"] == 2  # seeded: reproducible


def test_mathqa_and_pubmedqa(model, tmp_path):
    m, torch_model = model
    mathqa = [{"Problem": s, "options": "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these",
               "correct": "abcde"[i]} for i, s in enumerate(SENTENCES)]
    choices = ["38", "27.675", "30", "data inadequate", "none of these"]  # the options, split by hand
    abstract = {"contexts": ["We trained a model.", "It generates text."], "labels": ["A", "B"]}
    pubmed = [{"question": s + "?", "context": abstract, "final_decision": ["yes", "no", "maybe"][i % 3]}
              for i, s in enumerate(SENTENCES)]
    pubmed[3] = {"QUESTION": "Does it work?", "CONTEXTS": abstract["contexts"],
                 "final_decision": "maybe"}  # original keys
    write_jsonl(tmp_path, "mathqa", mathqa)
    write_jsonl(tmp_path, "pubmedqa", pubmed)
    r = ev.evaluate(m.params, m.config, m.tokenizer, ["mathqa", "pubmedqa"], str(tmp_path), batch_size=3)
    acc, norm = _mc_reference(torch_model, m.tokenizer, [f"Question: {d['Problem']}\nAnswer:" for d in mathqa],
                              [choices] * 4, [0, 1, 2, 3])
    assert (r["mathqa"]["acc"], r["mathqa"]["acc_norm"]) == (pytest.approx(acc), pytest.approx(norm))
    questions = [d["question"] for d in pubmed[:3]] + ["Does it work?"]
    contexts = ["Abstract: We trained a model.\nIt generates text.\nQuestion: " + q + "\nAnswer:" for q in questions]
    acc, _ = _mc_reference(torch_model, m.tokenizer, contexts, [["yes", "no", "maybe"]] * 4, [0, 1, 2, 2])
    assert r["pubmedqa"]["acc"] == pytest.approx(acc) and "acc_norm" not in r["pubmedqa"]


def test_tfds_task_data_without_download(model, tmp_path):
    """piqa, winogrande and mathqa read prepared TFDS datasets in the release's field names."""
    import tensorflow_datasets as tfds

    from neojax.data.sources import tfds_records
    from neojax.evaluate.task import available, get, load_docs
    m, _ = model
    for name in ("piqa", "winogrande", "math_qa"):
        (tmp_path / name).mkdir()  # where `tfds build` would have put them
    assert available("piqa", str(tmp_path / "none"), str(tmp_path)) and not available("hellaswag", ".", str(tmp_path))
    with tfds.testing.mock_data(num_examples=6):
        piqa = load_docs(str(tmp_path / "none"), "piqa", tfds_data_dir=str(tmp_path))
        with pytest.raises(ValueError, match="TFDS winogrande split train_xl record 0: field 'sentence' has no '_'"):
            load_docs(str(tmp_path / "none"), "winogrande", "train", str(tmp_path))  # mock sentences have no blank
        wino = [get("winogrande").tfds.record(r) for r in tfds_records("winogrande", "train_xl", str(tmp_path))]
        with pytest.raises(ValueError, match="TFDS math_qa split test record 0: field 'correct' must be one of a-e"):
            load_docs(str(tmp_path / "none"), "mathqa", tfds_data_dir=str(tmp_path))  # mock answers are random text
        mathqa = [get("mathqa").tfds.record(r) for r in tfds_records("math_qa", "test", str(tmp_path))]
        r = ev.evaluate(m.params, m.config, m.tokenizer, ["piqa"], str(tmp_path / "none"), tfds_data_dir=str(tmp_path))
    assert len(piqa) == 6 and all(isinstance(d["goal"], str) and d["label"] in (0, 1) for d in piqa)
    assert set(wino[0]) == {"sentence", "option1", "option2", "answer"} and {d["answer"] for d in wino} <= {"1", "2"}
    assert set(mathqa[0]) == {"Problem", "options", "correct"} and isinstance(mathqa[0]["options"], str)
    assert r["piqa"]["n"] == 6 and 0 <= r["piqa"]["acc"] <= 1  # (mock sentences have no "_" to score winogrande)
    with pytest.raises(FileNotFoundError, match="capitalises ctx_b"):
        load_docs(str(tmp_path), "hellaswag", tfds_data_dir=str(tmp_path))


def test_missing_task_file_names_path_and_format(model, tmp_path):
    m, _ = model
    with pytest.raises(FileNotFoundError, match=r"hellaswag.jsonl.*activity_label"):
        ev.evaluate(m.params, m.config, m.tokenizer, ["hellaswag"], str(tmp_path))


@pytest.mark.slow
def test_cli_results_and_paper_table(tiny_hf_with_tokenizer, tmp_path):
    write_jsonl(tmp_path, "lambada_openai", [{"text": s} for s in SENTENCES])
    write_jsonl(tmp_path, "piqa", [{"goal": s, "sol1": "yes", "sol2": "no", "label": 0} for s in SENTENCES])
    write_jsonl(tmp_path, "pile", [{"text": s, "meta": {}} for s in SENTENCES])
    out = tmp_path / "results.json"
    run = lambda *a: subprocess.run([sys.executable, "-m", "neojax.evaluate", "--checkpoint", tiny_hf_with_tokenizer,
                                     "--data_dir", str(tmp_path), *a], capture_output=True, text=True, timeout=300)
    r = run("--tasks", "lambada_openai,piqa", "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["lambada_openai"]) >= {"acc", "acc_stderr", "perplexity", "n"} and results["piqa"]["n"] == 4
    assert results["config"]["neojax_version"] and results["config"]["data_files"]
    r = run("--paper_table", "--output", str(tmp_path / "table.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| model | Pile BPB | Pile PPL | Wikitext PPL |" in r.stdout
    table = json.loads((tmp_path / "table.json").read_text())["table"][tiny_hf_with_tokenizer]
    assert table["Wikitext PPL"]["ours"] is None and table["MathQA"]["ours"] is None  # missing, never invented
    assert table["Lambada Acc"]["ours"] is not None and table["Pile BPB"]["ours"] is not None
    r = run("--tasks", "lambada_openia")
    assert r.returncode == 2 and "unknown task 'lambada_openia'" in r.stderr


def test_paper_table_compares_with_published_numbers():
    from neojax.model import preset
    assert ev.published_row(preset("gpt-neo-1.3B")) == "GPT-Neo 1.3B"
    table = ev.paper_table({"ours": ("GPT-Neo 1.3B", {"lambada_openai": {"acc": 0.58, "perplexity": 7.0}})})
    cell = table["ours"]["Lambada Acc"]
    assert cell["published"] == 0.5723 and cell["diff"] == pytest.approx(0.0077)
    text = ev.format_table(table)
    assert "58.00% (57.23%, +0.77%)" in text and "| - (0.7527) |" in text  # Pile BPB: no data here
    # the Codex paper's HumanEval rows beside a humaneval result
    table = ev.paper_table({"ours": ("GPT-Neo 125M", {"humaneval": {"pass@1": 0.01, "pass@10": 0.02}})})
    assert [table["ours"][c]["published"] for c in ev.CODE_COLUMNS] == [0.0075, 0.0188, 0.0297]
    assert table["ours"]["HumanEval pass@100"]["ours"] is None
    assert "| 1.00% (0.75%, +0.25%) | 2.00% (1.88%, +0.12%) | - (2.97%) |" in ev.format_table(table)


def test_paper_table_holds_humaneval_when_asked_for(tiny_hf_with_tokenizer, tmp_path):
    from neojax.evaluate.__main__ import main
    out = tmp_path / "table.json"
    assert main(["--paper_table", "--checkpoint", tiny_hf_with_tokenizer, "--sample_tasks", "--tasks",
                 "lambada_openai,humaneval", "--allow_code_execution", "--max_gen_toks", "8", "--output",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    cells = result["table"][tiny_hf_with_tokenizer]
    assert cells["HumanEval pass@1"]["ours"] == result["results"][tiny_hf_with_tokenizer]["humaneval"]["pass@1"]
    assert cells["Lambada Acc"]["ours"] is not None and cells["HumanEval pass@10"]["ours"] is None
    records = [json.loads(line) for line in open(tmp_path / "table.humaneval.jsonl")]
    assert [r["task_id"] for r in records] == ["Sample/0", "Sample/1", "Sample/2"]
