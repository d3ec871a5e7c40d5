"""Task files from the public releases the harness reads, through the `datasets` library:

    python -m neojax.evaluate --prepare lambada_openai,wmt16-de-en,bbq --data_dir tasks/

writes <file>.jsonl (the evaluated split) and <file>.train.jsonl (the few-shot pool) in the
documented fields. `source_dir` reads datasets saved with `Dataset.save_to_disk` under
source_dir/<hub id with "/" as "__">/<config>/<split> instead of the hub (an offline machine).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

from neojax import cli, registry
from neojax.evaluate.tasks import file_stem
from neojax.files import write_json

_keep = lambda *fields: (lambda r: {f: r[f] for f in fields})
# file stem -> (hub id, config, {"": evaluated split, "train": few-shot split}, record -> our record)
RELEASES: dict[str, tuple[str, Optional[str], dict, Callable]] = {
    "lambada_openai": ("EleutherAI/lambada_openai", "default", {"": "test"}, _keep("text")),
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", {"": "test"}, _keep("page")),
    "hellaswag": ("Rowan/hellaswag", None, {"": "validation", "train": "train"},
                  _keep("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    "piqa": ("baber/piqa", None, {"": "validation", "train": "train"}, _keep("goal", "sol1", "sol2", "label")),
    "winogrande": ("allenai/winogrande", "winogrande_xl", {"": "validation", "train": "train"},
                   _keep("sentence", "option1", "option2", "answer")),
    "mathqa": ("allenai/math_qa", None, {"": "test", "train": "train"}, _keep("Problem", "options", "correct")),
    "pubmedqa": ("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", {"": "test", "train": "train"},
                 lambda r: {"question": r["QUESTION"], "context": {"contexts": r["CONTEXTS"]},
                            "final_decision": r["final_decision"]}),
    "truthfulqa_gen": ("truthfulqa/truthful_qa", "generation", {"": "validation"},
                       _keep("question", "best_answer", "correct_answers", "incorrect_answers")),
    "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", {"": "test"}, _keep("article", "highlights")),
    "crows_pairs_english": ("jannalu/crows_pairs_multilingual", "english", {"": "test"},
                            _keep("sent_more", "sent_less", "stereo_antistereo", "bias_type")),
    "winogender": ("oskarvanderwal/winogender", "all", {"": "test"},
                   _keep("sentid", "sentence", "pronoun", "occupation", "participant", "target", "label", "gender")),
    "winogender_gotcha": ("oskarvanderwal/winogender", "gotcha", {"": "test"},
                          _keep("sentid", "sentence", "pronoun", "occupation", "participant", "target", "label",
                                "gender")),
    "bbq": ("oskarvanderwal/bbq", "All", {"": "test"}, lambda r: dict(r)),
    "toxigen": ("skg/toxigen-data", "annotated", {"": "test"}, _keep("text", "toxicity_ai", "toxicity_human")),
}
for _year, _pairs in (("wmt16", ("de-en", "ro-en")), ("wmt14", ("fr-en",))):
    for _pair in _pairs:
        src, tgt = _pair.split("-")
        for a, b in ((src, tgt), (tgt, src)):  # few-shot examples come from validation, as the harness's
            RELEASES[f"{_year}-{a}-{b}"] = (f"wmt/{_year}", _pair, {"": "test", "train": "validation"},
                                            _keep("translation"))


def prepare(tasks: list[str], data_dir: str, source_dir: Optional[str] = None, limit: int = 0) -> list[str]:
    """Write every task's files; returns the paths written. Raises UsageError naming what failed."""
    stems = []
    for task in tasks:
        if task not in registry.names("task"):
            raise cli.UsageError(f"--prepare: unknown task {task!r}; tasks with a public release: "
                                 f"{', '.join(sorted(RELEASES))}")
        stem = file_stem(task)
        if stem not in RELEASES:
            raise cli.UsageError(f"--prepare: no public release is known for {task!r}; prepare: "
                                 f"{', '.join(sorted(RELEASES))}")
        if stem not in stems:
            stems.append(stem)
    datasets = cli.require("datasets", "--prepare", "datasets")  # deferred: an optional dependency
    os.makedirs(data_dir, exist_ok=True)
    written = []
    for stem in stems:
        hub_id, config, splits, record = RELEASES[stem]
        for role, split in splits.items():
            rows = _load(datasets, hub_id, config, split, source_dir)
            rows = rows.select(range(min(limit, len(rows)))) if limit else rows
            path = os.path.join(data_dir, f"{stem}{'.' + role if role else ''}.jsonl")
            text = "".join(json.dumps(record(r), ensure_ascii=False) + "\n" for r in rows)
            write_json(path, text)  # a string: written as is, renamed into place
            print(f"wrote {path} ({len(rows)} records from {hub_id} {config or ''} {split})".replace("  ", " "))
            written.append(path)
    return written


def _load(datasets, hub_id: str, config: Optional[str], split: str, source_dir: Optional[str]):
    if source_dir:
        path = os.path.join(source_dir, hub_id.replace("/", "__"), config or "default", split)
        if not os.path.isdir(path):
            raise cli.UsageError(f"--prepare_source {source_dir}: {path} is missing; save it there with "
                                 f"datasets.load_dataset({hub_id!r}, {config!r}, split={split!r}).save_to_disk(PATH)")
        return datasets.load_from_disk(path)
    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # the hub's failures have many types: name the dataset and the cause
        raise cli.UsageError(f"--prepare: could not load {hub_id} ({config}, {split}) from the Hugging Face hub: "
                             f"{cli.message(e)}; check the network, or save it elsewhere and pass --prepare_source"
                             ) from None
