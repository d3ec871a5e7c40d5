"""The GPT-Neo table's tasks with the harness's exact definitions, each declared once (neojax.evaluate.task).

Records are in the public releases' field names (see each task's `format`); `--prepare` writes
them from the release, and piqa, winogrande and mathqa can read prepared TFDS datasets instead.
"""
from __future__ import annotations

import json
import math
import random
import re
from typing import Optional

import numpy as np

from neojax.evaluate.task import (
    FEWSHOT_SEED,
    Release,
    Task,
    Tfds,
    fewshot_prefix,
    keep,
    mean_stderr,
    multiple_choice_task,
    one_of,
    register,
    rules,
    strings,
)


# --- the definitions ------------------------------------------------------------------------------
def wikitext_detokenize(string: str) -> str:
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        string = string.replace(f" {p} ", f"{p} ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n").replace("\n ", "\n")
    string = string.replace(" N ", " 1 ").replace(" 's", "'s")
    return string


def hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_query(doc) -> str:
    return hellaswag_clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())


def lambada_split(text: str) -> tuple[str, str]:
    context, word = text.rsplit(" ", 1)
    return context, " " + word


def winogrande_parts(doc) -> tuple[list[str], str]:
    i = doc["sentence"].index("_")
    return [doc["sentence"][:i] + doc[f"option{k}"] for k in (1, 2)], " " + doc["sentence"][i + 1:].strip()


def mathqa_choices(options: str) -> list[str]:
    """"a ) 38 , b ) 27.675 , ... e ) none" -> ["38", "27.675", ..., "none"] (the harness's regex)."""
    return [c[4:].rstrip(" ,") for c in re.findall(r"[abcd] \) .*?, |e \) .*?$", options)]


PUBMEDQA_CHOICES = ["yes", "no", "maybe"]


def pubmedqa_query(doc) -> str:
    """The abstract's sections, one per line, then the question (HF layout or the original's keys)."""
    contexts = doc["context"]["contexts"] if "context" in doc else doc["CONTEXTS"]
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), doc.get("question", doc.get("QUESTION")))


def _label(value, choices: int) -> Optional[int]:
    """An integer label (or its string: hellaswag's release writes "3") in [0, choices), else None."""
    if isinstance(value, bool):
        return None
    try:
        label = int(value)
    except (TypeError, ValueError):
        return None
    return label if 0 <= label < choices and str(label) == str(value).strip() else None


# --- lambada_openai and wikitext ------------------------------------------------------------------
def lambada_openai(scorer, docs, train_docs, num_fewshot=0):
    rnd = random.Random(FEWSHOT_SEED)
    pairs = []
    for doc in docs:
        context, target = lambada_split(doc["text"])
        prefix = fewshot_prefix(train_docs, num_fewshot, rnd, lambda d: d["text"], doc)
        pairs.append((prefix + context, target))
    results = scorer.loglikelihood(pairs)
    lls, greedy = [r[0] for r in results], [float(r[1]) for r in results]
    acc, acc_se = mean_stderr(greedy)
    mean_ll, ll_se = mean_stderr(lls)
    return {"acc": acc, "acc_stderr": acc_se, "perplexity": math.exp(-mean_ll),
            "perplexity_stderr": math.exp(-mean_ll) * ll_se}  # delta method, as the harness


register(Task(
    "lambada_openai", lambada_openai, '{"text": ...}',
    rules(strings("text"), lambda d: None if " " in d["text"].strip() else
          "field 'text' has no space: the last word is the target, the rest the context"),
    release=Release("EleutherAI/lambada_openai", "default", {"": "test"}, keep("text")),
    not_in_tfds="TFDS's lambada is the original LAMBADA text, not OpenAI's detokenised test set",
    columns={"Lambada PPL": "perplexity", "Lambada Acc": "acc"}))


def wikitext(scorer, docs, train_docs, num_fewshot=0):
    lls = scorer.loglikelihood_rolling([wikitext_detokenize(d["page"]) for d in docs])
    words = sum(len(re.split(r"\s+", d["page"])) for d in docs)
    n_bytes = sum(len(d["page"].encode("utf-8")) for d in docs)
    total = sum(lls)
    return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / n_bytes),
            "bits_per_byte": -total / n_bytes / math.log(2)}


register(Task(
    "wikitext", wikitext, '{"page": ...} (document-level wikitext-103/2 raw pages)', strings("page"),
    kind="perplexity", zero_shot="a perplexity task, scored without examples",
    release=Release("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", {"": "test"}, keep("page")),
    columns={"Wikitext PPL": "word_perplexity"}))


# --- multiple choice ------------------------------------------------------------------------------
def _hellaswag_endings(doc) -> Optional[str]:
    endings = doc.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        return f"field 'endings' must be a list of at least 2 strings, not {json.dumps(endings)[:60]}"
    if _label(doc.get("label"), len(endings)) is None:
        return f"field 'label' must be an integer in [0, {len(endings)}), not {json.dumps(doc.get('label'))}"
    return None


multiple_choice_task(
    "hellaswag", query=hellaswag_query, choices=lambda d: [hellaswag_clean(e) for e in d["endings"]],
    gold=lambda d: int(d["label"]),
    format='{"activity_label", "ctx_a", "ctx_b", "endings": [4], "label"}',
    check=rules(strings("activity_label", "ctx_a", "ctx_b"), _hellaswag_endings),
    release=Release("Rowan/hellaswag", None, {"": "validation", "train": "train"},
                    keep("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    not_in_tfds="TFDS's hellaswag keeps only the joined `context`; the harness capitalises ctx_b on its own",
    columns={"Hellaswag": "acc"})

multiple_choice_task(
    "piqa", query=lambda d: f"Question: {d['goal']}\nAnswer:", choices=lambda d: [d["sol1"], d["sol2"]],
    gold=lambda d: int(d["label"]),
    format='{"goal", "sol1", "sol2", "label"}',
    check=rules(strings("goal", "sol1", "sol2"), lambda d: None if _label(d.get("label"), 2) is not None else
                f"field 'label' must be 0 or 1, not {json.dumps(d.get('label'))}"),
    release=Release("baber/piqa", None, {"": "validation", "train": "train"}, keep("goal", "sol1", "sol2", "label")),
    tfds=Tfds("piqa", {"": "validation", "train": "train"}, keep("goal", "sol1", "sol2", "label")),
    columns={"PIQA": "acc"})

multiple_choice_task(
    "mathqa", query=lambda d: f"Question: {d['Problem']}\nAnswer:", choices=lambda d: mathqa_choices(d["options"]),
    gold=lambda d: "abcde".index(d["correct"]),
    format='{"Problem", "options": "a ) ... , b ) ... , e ) ...", "correct": "a".."e"} (MathQA test split)',
    check=rules(strings("Problem", "options", "correct"),
                lambda d: None if d["correct"] in tuple("abcde") else
                f"field 'correct' must be one of a-e, not {json.dumps(d['correct'])}",
                lambda d: None if len(mathqa_choices(d["options"])) == 5 else
                "field 'options' must read 'a ) ... , b ) ... , c ) ... , d ) ... , e ) ...'"),
    release=Release("allenai/math_qa", None, {"": "test", "train": "train"}, keep("Problem", "options", "correct")),
    tfds=Tfds("math_qa", {"": "test", "train": "train"}, keep("Problem", "options", "correct")),
    columns={"MathQA": "acc"})


def _pubmedqa_check(doc) -> Optional[str]:
    contexts = doc["context"].get("contexts") if isinstance(doc.get("context"), dict) else doc.get("CONTEXTS")
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        return "field 'context.contexts' must be a list of strings"
    if not isinstance(doc.get("question", doc.get("QUESTION")), str):
        return "field 'question' must be a string"
    return None


multiple_choice_task(  # acc only: the harness reports no acc_norm here
    "pubmedqa", query=pubmedqa_query, choices=lambda d: PUBMEDQA_CHOICES,
    gold=lambda d: PUBMEDQA_CHOICES.index(d["final_decision"]), metrics=("acc",),
    format='{"question", "context": {"contexts": [...]}, "final_decision": "yes"|"no"|"maybe"} (pqa_labeled)',
    check=rules(strings("final_decision"), _pubmedqa_check, one_of("final_decision", PUBMEDQA_CHOICES)),
    release=Release("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", {"": "test", "train": "train"},
                    lambda r: {"question": r["QUESTION"], "context": {"contexts": r["CONTEXTS"]},
                               "final_decision": r["final_decision"]}),
    columns={"PubMedQA": "acc"})


# --- winogrande: partial scoring ------------------------------------------------------------------
def winogrande(scorer, docs, train_docs, num_fewshot=0):
    """The option fills the blank in the context; the rest is the shared target."""
    rnd = random.Random(FEWSHOT_SEED)

    def render(d):
        contexts, target = winogrande_parts(d)
        return contexts[int(d["answer"]) - 1] + target

    pairs = []
    for d in docs:
        prefix = fewshot_prefix(train_docs, num_fewshot, rnd, render, d)
        contexts, target = winogrande_parts(d)
        pairs += [(prefix + c, target) for c in contexts]
    lls = [r[0] for r in scorer.loglikelihood(pairs)]
    acc = [float(np.argmax(lls[2 * i:2 * i + 2]) == int(d["answer"]) - 1) for i, d in enumerate(docs)]
    a, se = mean_stderr(acc)
    return {"acc": a, "acc_stderr": se}


register(Task(
    "winogrande", winogrande, '{"sentence" with "_", "option1", "option2", "answer": "1"|"2"}',
    rules(strings("sentence", "option1", "option2"),
          lambda d: None if "_" in d["sentence"] else "field 'sentence' has no '_' (the blank the options fill)",
          lambda d: None if str(d.get("answer")) in ("1", "2") else
          f"field 'answer' must be \"1\" or \"2\", not {json.dumps(d.get('answer'))}"),
    release=Release("allenai/winogrande", "winogrande_xl", {"": "validation", "train": "train"},
                    keep("sentence", "option1", "option2", "answer")),
    tfds=Tfds("winogrande", {"": "validation", "train": "train_xl"},  # label 0/1 is answer "1"/"2"
              lambda r: {**{k: r[k] for k in ("sentence", "option1", "option2")}, "answer": str(r["label"] + 1)}),
    columns={"Winogrande": "acc"}))


# --- any texts ------------------------------------------------------------------------------------
def perplexity_of_texts(scorer, texts: list[str], stride: Optional[int] = None) -> dict:
    """Token perplexity and bits per byte of any texts (the Pile's BPB/PPL columns), rolling
    windows of max_len predicting `stride` new tokens each (default max_len)."""
    stride = stride or scorer.max_len
    if not 0 < stride <= scorer.max_len:
        raise ValueError(f"stride={stride} must be in [1, {scorer.max_len}] (the context): each window predicts "
                         "`stride` new tokens after max_len - stride tokens of context")
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("no text to score: the files are empty")
    lls = scorer.loglikelihood_rolling(texts, context_len=scorer.max_len - stride + 1)
    n_tokens = sum(len(scorer.tokenizer.encode(t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    total = sum(lls)
    return {"perplexity": math.exp(-total / n_tokens), "bits_per_byte": -total / n_bytes / math.log(2),
            "byte_perplexity": math.exp(-total / n_bytes), "tokens": n_tokens, "bytes": n_bytes}
