"""The GPT-Neo table's tasks with the harness's exact definitions, registered (kind "task").

Data are local files in data_dir: `<task>.jsonl` (the evaluated split) and `<task>.train.jsonl`
(few-shot examples), in the public releases' field names; or, for the tasks in TFDS below, a
TFDS dataset already prepared in tfds_data_dir. Nothing is downloaded.
"""
from __future__ import annotations

import io
import json
import math
import os
import random
import re
from typing import Callable, Optional

import numpy as np

from neojax import paths, registry
from neojax.data.sources import tfds_records

FORMATS = {
    "lambada_openai": '{"text": ...}',
    "wikitext": '{"page": ...} (document-level wikitext-103/2 raw pages)',
    "hellaswag": '{"activity_label", "ctx_a", "ctx_b", "endings": [4], "label"}',
    "piqa": '{"goal", "sol1", "sol2", "label"}',
    "winogrande": '{"sentence" with "_", "option1", "option2", "answer": "1"|"2"}',
    "mathqa": '{"Problem", "options": "a ) ... , b ) ... , e ) ...", "correct": "a".."e"} (MathQA test split)',
    "pubmedqa": '{"question", "context": {"contexts": [...]}, "final_decision": "yes"|"no"|"maybe"} (pqa_labeled)',
}
# Tasks whose TFDS datasets hold the same records: TFDS name, split per role ("" evaluated,
# "train" few-shot), and the record in the release's field names.
TFDS = {
    "piqa": ("piqa", {"": "validation", "train": "train"},
             lambda r: {k: r[k] for k in ("goal", "sol1", "sol2", "label")}),
    "winogrande": ("winogrande", {"": "validation", "train": "train_xl"},  # label 0/1 is answer "1"/"2"
                   lambda r: {**{k: r[k] for k in ("sentence", "option1", "option2")}, "answer": str(r["label"] + 1)}),
    "mathqa": ("math_qa", {"": "test", "train": "train"},
               lambda r: {k: r[k] for k in ("Problem", "options", "correct")}),
}
NOT_IN_TFDS = {  # why these tasks cannot read TFDS's datasets of the same name
    "hellaswag": "TFDS's hellaswag keeps only the joined `context`; the harness capitalises ctx_b on its own",
    "lambada_openai": "TFDS's lambada is the original LAMBADA text, not OpenAI's detokenised test set",
}
FEWSHOT_SEED = 1234
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")  # a few made-up records per task
_CHECKS: dict[str, Callable[[dict], Optional[str]]] = {}  # task -> its record check (see describe)
GENERATES: set[str] = set()  # tasks that generate text (not log-likelihood only)
ZERO_SHOT = {"wikitext": "a perplexity task, scored without examples"}  # task -> why it takes no examples
_FILES: dict[str, tuple[str, Optional[Callable[[dict], bool]]]] = {}  # task -> (file stem, record filter)


# Record checks: each takes a record and returns what is wrong with it, or None; `rules` chains them.
Check = Callable[[dict], Optional[str]]


def rules(*checks: Check) -> Check:
    """The first problem any of `checks` finds."""
    return lambda doc: next((problem for check in checks if (problem := check(doc))), None)


def texts(*fields: str) -> Check:
    """Each of `fields` is present, a string, and not empty or blank."""
    def check(doc):
        for f in fields:
            if not isinstance(doc.get(f), str):
                return f"field {f!r} must be a string, not {json.dumps(doc.get(f))[:40]}"
            if not doc[f].strip():
                return f"field {f!r} is empty"
        return None
    return check


def one_of(field: str, values) -> Check:
    """`field` is one of `values` (strings compared exactly)."""
    values = list(values)
    return lambda doc: None if isinstance(doc.get(field), str) and doc[field] in values else (
        f"field {field!r} must be one of {', '.join(map(str, values))}; not {json.dumps(doc.get(field))[:40]}")


def choice_label(field: str, choices: int, meaning: str = "") -> Check:
    """`field` is an integer (not a boolean, not a string) in [0, choices)."""
    def check(doc):
        value = doc.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < choices:
            return f"field {field!r} must be an integer in [0, {choices}){meaning}, not {json.dumps(value)[:40]}"
        return None
    return check


def number(field: str, low: float, high: float, meaning: str = "") -> Check:
    """`field` is a finite number (not a boolean) in [low, high]."""
    def check(doc):
        value = doc.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                not low <= value <= high:
            return f"field {field!r} must be a number in [{low}, {high}]{meaning}, not {json.dumps(value)[:40]}"
        return None
    return check


def describe(task: str, record_format: str, check: Callable[[dict], Optional[str]], generates: bool = False,
             file: Optional[str] = None, select: Optional[Callable[[dict], bool]] = None,
             zero_shot: Optional[str] = None):
    """Declare a task's record format (shown in errors) and its check (record -> problem or None);
    a subset task reads `file`'s records for which `select` holds (e.g. one bias category); a
    zero-shot task says why it takes no few-shot examples."""
    FORMATS[task] = record_format
    _CHECKS[task] = check
    if generates:
        GENERATES.add(task)
    if zero_shot:
        ZERO_SHOT[task] = zero_shot
    if file is not None:
        _FILES[task] = (file, select)


class EmptySubset(ValueError):
    """A subset task (one category) whose file holds no record of that subset."""


def file_stem(task: str) -> str:
    """The name of the task's files: its own, or the file a subset task (one category) reads."""
    return _FILES.get(task, (task,))[0]


def _jsonl_path(data_dir: str, task: str, split: str) -> str:
    return str(paths.path(data_dir) / f"{file_stem(task)}{'.' + split if split else ''}.jsonl")


def available(task: str, data_dir: str, tfds_data_dir: Optional[str] = None) -> bool:
    """Whether the task's evaluated split is in data_dir (jsonl) or prepared in tfds_data_dir."""
    return paths.exists(_jsonl_path(data_dir, task, "")) or bool(
        tfds_data_dir and task in TFDS and os.path.isdir(os.path.join(tfds_data_dir, TFDS[task][0])))


def load_docs(data_dir: str, task: str, split: str = "", tfds_data_dir: Optional[str] = None) -> list[dict]:
    """The task's records: data_dir/<task>[.split].jsonl, else (given tfds_data_dir) TFDS. Every
    record is checked (fields, types, label ranges): a bad one names the file and line."""
    path = _jsonl_path(data_dir, task, split)
    if not paths.exists(path):
        if tfds_data_dir and task in TFDS:
            name, splits, record = TFDS[task]
            docs = [record(r) for r in tfds_records(name, splits[split], tfds_data_dir)]
            for i, doc in enumerate(docs):
                _check_doc(task, doc, f"TFDS {name} split {splits[split]} record {i}")
            if not docs:
                raise ValueError(f"{task}: TFDS {name} split {splits[split]} in {tfds_data_dir} has no records")
            return docs
        hint = (f", or pass --tfds_data_dir where TFDS {TFDS[task][0]!r} is prepared" if task in TFDS else
                f" ({NOT_IN_TFDS[task]})" if task in NOT_IN_TFDS else "")
        raise FileNotFoundError(f"{task}: expected {path}, one JSON object per line: {FORMATS.get(task, '')}{hint}")
    if paths.is_dir(path):
        raise ValueError(f"{task}: {path} is a directory; expected a JSON-lines file")
    docs = []
    with io.TextIOWrapper(paths.path(path).open("rb"), encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not valid JSON ({e.msg}); expected {FORMATS.get(task, '')}") \
                        from None
                _check_doc(task, doc, f"{path} line {n}")
                docs.append(doc)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not docs:
        raise ValueError(f"{path} holds no records; expected one JSON object per line: {FORMATS.get(task, '')}")
    select = _FILES.get(task, (None, None))[1]
    if select is not None:
        docs = [d for d in docs if select(d)]
        if not docs:
            raise EmptySubset(f"{task}: no record of {path} belongs to this subset")
    return docs


def _label(value, choices: int):
    """An integer label (or its string) in [0, choices), else None."""
    if isinstance(value, bool):
        return None
    try:
        label = int(value)
    except (TypeError, ValueError):
        return None
    return label if 0 <= label < choices and str(label) == str(value).strip() else None


def _problem(task: str, doc) -> Optional[str]:
    """What is wrong with one record of `task`, or None."""
    if not isinstance(doc, dict):
        return f"a {type(doc).__name__}, not a JSON object"
    strings = {"lambada_openai": ["text"], "wikitext": ["page"], "hellaswag": ["activity_label", "ctx_a", "ctx_b"],
               "piqa": ["goal", "sol1", "sol2"], "winogrande": ["sentence", "option1", "option2"],
               "mathqa": ["Problem", "options", "correct"], "pubmedqa": ["final_decision"]}.get(task, [])
    for field in strings:
        if field not in doc:
            return f"field {field!r} is missing"
        if not isinstance(doc[field], str):
            return f"field {field!r} must be a string, not {type(doc[field]).__name__}"
    if task in _CHECKS:
        return _CHECKS[task](doc)
    if task == "lambada_openai" and " " not in doc["text"].strip():
        return "field 'text' has no space: the last word is the target, the rest the context"
    if task == "hellaswag":
        endings = doc.get("endings")
        if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
            return f"field 'endings' must be a list of at least 2 strings, not {json.dumps(endings)[:60]}"
        if _label(doc.get("label"), len(endings)) is None:
            return f"field 'label' must be an integer in [0, {len(endings)}), not {json.dumps(doc.get('label'))}"
    if task == "piqa" and _label(doc.get("label"), 2) is None:
        return f"field 'label' must be 0 or 1, not {json.dumps(doc.get('label'))}"
    if task == "winogrande":
        if "_" not in doc["sentence"]:
            return "field 'sentence' has no '_' (the blank the options fill)"
        if str(doc.get("answer")) not in ("1", "2"):
            return f"field 'answer' must be \"1\" or \"2\", not {json.dumps(doc.get('answer'))}"
    if task == "mathqa":
        if doc["correct"] not in tuple("abcde"):
            return f"field 'correct' must be one of a-e, not {json.dumps(doc['correct'])}"
        if len(mathqa_choices(doc["options"])) != 5:
            return "field 'options' must read 'a ) ... , b ) ... , c ) ... , d ) ... , e ) ...'"
    if task == "pubmedqa":
        contexts = doc["context"].get("contexts") if isinstance(doc.get("context"), dict) else doc.get("CONTEXTS")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            return "field 'context.contexts' must be a list of strings"
        if not isinstance(doc.get("question", doc.get("QUESTION")), str):
            return "field 'question' must be a string"
        if doc["final_decision"] not in PUBMEDQA_CHOICES:
            return f"field 'final_decision' must be one of {PUBMEDQA_CHOICES}, not {json.dumps(doc['final_decision'])}"
    return None


def _check_doc(task: str, doc, where: str) -> None:
    problem = _problem(task, doc)
    if problem:
        raise ValueError(f"{where}: {problem} (a {task} record is {FORMATS.get(task, 'a JSON object')})")


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
    lls = scorer.loglikelihood_rolling([wikitext_detokenize(d["page"]) for d in docs])
    words = sum(len(re.split(r"\s+", d["page"])) for d in docs)
    n_bytes = sum(len(d["page"].encode("utf-8")) for d in docs)
    total = sum(lls)
    return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / n_bytes),
            "bits_per_byte": -total / n_bytes / math.log(2)}


def multiple_choice(scorer, contexts, choices, golds):
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
    return multiple_choice(scorer, contexts, [[hellaswag_clean(e) for e in d["endings"]] for d in docs],
                            [int(d["label"]) for d in docs])


@registry.register("task", "piqa")
def piqa(scorer, docs, train_docs, num_fewshot=0):
    rnd = random.Random(FEWSHOT_SEED)
    query = lambda d: f"Question: {d['goal']}\nAnswer:"
    render = lambda d: query(d) + " " + d[f"sol{int(d['label']) + 1}"]
    contexts = [fewshot_prefix(train_docs, num_fewshot, rnd, render, d) + query(d) for d in docs]
    return multiple_choice(scorer, contexts, [[d["sol1"], d["sol2"]] for d in docs], [int(d["label"]) for d in docs])


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


def mathqa_choices(options: str) -> list[str]:
    """"a ) 38 , b ) 27.675 , ... e ) none" -> ["38", "27.675", ..., "none"] (the harness's regex)."""
    return [c[4:].rstrip(" ,") for c in re.findall(r"[abcd] \) .*?, |e \) .*?$", options)]


@registry.register("task", "mathqa")
def mathqa(scorer, docs, train_docs, num_fewshot=0):
    rnd = random.Random(FEWSHOT_SEED)
    query = lambda d: f"Question: {d['Problem']}\nAnswer:"
    gold = lambda d: "abcde".index(d["correct"])
    render = lambda d: query(d) + " " + mathqa_choices(d["options"])[gold(d)]
    contexts = [fewshot_prefix(train_docs, num_fewshot, rnd, render, d) + query(d) for d in docs]
    return multiple_choice(scorer, contexts, [mathqa_choices(d["options"]) for d in docs], [gold(d) for d in docs])


PUBMEDQA_CHOICES = ["yes", "no", "maybe"]


def pubmedqa_query(doc) -> str:
    """The abstract's sections, one per line, then the question (HF layout or the original's keys)."""
    contexts = doc["context"]["contexts"] if "context" in doc else doc["CONTEXTS"]
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), doc.get("question", doc.get("QUESTION")))


@registry.register("task", "pubmedqa")
def pubmedqa(scorer, docs, train_docs, num_fewshot=0):
    """acc over " yes" / " no" / " maybe" (the harness reports no acc_norm here)."""
    rnd = random.Random(FEWSHOT_SEED)
    render = lambda d: pubmedqa_query(d) + " " + d["final_decision"]
    contexts = [fewshot_prefix(train_docs, num_fewshot, rnd, render, d) + pubmedqa_query(d) for d in docs]
    metrics = multiple_choice(scorer, contexts, [PUBMEDQA_CHOICES] * len(docs),
                               [PUBMEDQA_CHOICES.index(d["final_decision"]) for d in docs])
    return {"acc": metrics["acc"], "acc_stderr": metrics["acc_stderr"]}


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
