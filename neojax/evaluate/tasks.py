"""The GPT-Neo table's tasks with the harness's exact definitions, registered (kind "task").

Data are local files in data_dir: `<task>.jsonl` (the evaluated split) and `<task>.train.jsonl`
(few-shot examples), in the public releases' field names. Nothing is downloaded.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
from typing import Callable, Optional

import numpy as np

from neojax import registry

FORMATS = {
    "lambada_openai": '{"text": ...}',
    "wikitext": '{"page": ...} (document-level wikitext-103/2 raw pages)',
    "hellaswag": '{"activity_label", "ctx_a", "ctx_b", "endings": [4], "label"}',
    "piqa": '{"goal", "sol1", "sol2", "label"}',
    "winogrande": '{"sentence" with "_", "option1", "option2", "answer": "1"|"2"}',
}
FEWSHOT_SEED = 1234


def load_docs(data_dir: str, task: str, split: str = "") -> list[dict]:
    name = f"{task}{'.' + split if split else ''}.jsonl"
    path = os.path.join(data_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{task}: expected {path}, one JSON object per line: {FORMATS.get(task, '')}")
    with open(path) as f:
        try:
            return [json.loads(line) for line in f if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON lines ({e})") from e


def mean_stderr(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def fewshot_prefix(train_docs, n: int, rnd: random.Random, render: Callable[[dict], str], exclude=None) -> str:
    if n == 0:
        return ""
    pool = [d for d in train_docs if d is not exclude]
    if len(pool) < n:
        raise ValueError(f"num_fewshot={n} but only {len(pool)} training examples are available")
    return "".join(render(d) + "\n\n" for d in rnd.sample(pool, n))


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


# --- tasks ----------------------------------------------------------------------------------------
@registry.register("task", "lambada_openai")
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


@registry.register("task", "wikitext")
def wikitext(scorer, docs, train_docs, num_fewshot=0):
    if num_fewshot:
        raise ValueError("wikitext is a perplexity task: num_fewshot must be 0")
    lls = scorer.loglikelihood_rolling([wikitext_detokenize(d["page"]) for d in docs])
    words = sum(len(re.split(r"\s+", d["page"])) for d in docs)
    n_bytes = sum(len(d["page"].encode("utf-8")) for d in docs)
    total = sum(lls)
    return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / n_bytes),
            "bits_per_byte": -total / n_bytes / math.log(2)}


def _multiple_choice(scorer, contexts, choices, golds):
    """acc (argmax ll) and acc_norm (argmax ll / characters of the choice), as the harness."""
    pairs = [(c, " " + ch) for c, chs in zip(contexts, choices) for ch in chs]
    lls = iter(r[0] for r in scorer.loglikelihood(pairs))
    acc, acc_norm = [], []
    for chs, gold in zip(choices, golds):
        ll = np.array([next(lls) for _ in chs])
        acc.append(float(np.argmax(ll) == gold))
        acc_norm.append(float(np.argmax(ll / np.array([len(c) for c in chs])) == gold))
    (a, ase), (n, nse) = mean_stderr(acc), mean_stderr(acc_norm)
    return {"acc": a, "acc_stderr": ase, "acc_norm": n, "acc_norm_stderr": nse}


@registry.register("task", "hellaswag")
def hellaswag(scorer, docs, train_docs, num_fewshot=0):
    rnd = random.Random(FEWSHOT_SEED)
    render = lambda d: hellaswag_query(d) + " " + hellaswag_clean(d["endings"][int(d["label"])])
    contexts = [fewshot_prefix(train_docs, num_fewshot, rnd, render, d) + hellaswag_query(d) for d in docs]
    return _multiple_choice(scorer, contexts, [[hellaswag_clean(e) for e in d["endings"]] for d in docs],
                            [int(d["label"]) for d in docs])


@registry.register("task", "piqa")
def piqa(scorer, docs, train_docs, num_fewshot=0):
    rnd = random.Random(FEWSHOT_SEED)
    query = lambda d: f"Question: {d['goal']}\nAnswer:"
    render = lambda d: query(d) + " " + d[f"sol{int(d['label']) + 1}"]
    contexts = [fewshot_prefix(train_docs, num_fewshot, rnd, render, d) + query(d) for d in docs]
    return _multiple_choice(scorer, contexts, [[d["sol1"], d["sol2"]] for d in docs], [int(d["label"]) for d in docs])


@registry.register("task", "winogrande")
def winogrande(scorer, docs, train_docs, num_fewshot=0):
    """Partial scoring: the option fills the blank in the context; the rest is the shared target."""
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


def perplexity_of_texts(scorer, texts: list[str], stride: Optional[int] = None) -> dict:
    """Token perplexity and bits per byte of any texts (the Pile's BPB/PPL columns), rolling
    windows of max_len predicting `stride` new tokens each (default max_len)."""
    stride = stride or scorer.max_len
    lls = scorer.loglikelihood_rolling(texts, context_len=scorer.max_len - stride + 1)
    n_tokens = sum(len(scorer.tokenizer.encode(t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    total = sum(lls)
    return {"perplexity": math.exp(-total / n_tokens), "bits_per_byte": -total / n_bytes / math.log(2),
            "byte_perplexity": math.exp(-total / n_bytes), "tokens": n_tokens, "bytes": n_bytes}
