"""Task files from the public releases the harness reads, through the `datasets` library:

    python -m neojax.evaluate --prepare lambada_openai,wmt16-de-en,bbq --data_dir tasks/

writes <file>.jsonl (the evaluated split) and <file>.train.jsonl (the few-shot pool) in the
documented fields. `source_dir` reads datasets saved with `Dataset.save_to_disk` under
source_dir/<hub id with "/" as "__">/<config>/<split> instead of the hub (an offline machine).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from neojax import cli
from neojax.evaluate import task as tasks
from neojax.files import write_json


def released() -> list[str]:
    """The tasks --prepare can write."""
    return [n for n in tasks.names() if tasks.get(n).release is not None]


def prepare(names: list[str], data_dir: str, source_dir: Optional[str] = None, limit: int = 0) -> list[str]:
    """Write every task's files (each file once, however many tasks read it); returns the paths
    written. Raises UsageError naming what failed."""
    releases = {}
    for name in names:
        if name not in tasks.names():
            raise cli.UsageError(f"--prepare: unknown task {name!r}; tasks with a public release: "
                                 f"{', '.join(released())}")
        task = tasks.get(name)
        if task.release is None:
            raise cli.UsageError(f"--prepare: no public release is known for {name!r}; prepare: "
                                 f"{', '.join(released())}")
        releases.setdefault(task.stem, task.release)
    datasets = cli.require("datasets", "--prepare", "datasets")  # deferred: an optional dependency
    os.makedirs(data_dir, exist_ok=True)
    written = []
    for stem, release in releases.items():
        for role, split in release.splits.items():
            rows = _load(datasets, release.hub_id, release.config, split, source_dir)
            rows = rows.select(range(min(limit, len(rows)))) if limit else rows
            path = os.path.join(data_dir, f"{stem}{'.' + role if role else ''}.jsonl")
            text = "".join(json.dumps(release.record(r), ensure_ascii=False) + "\n" for r in rows)
            write_json(path, text)  # a string: written as is, renamed into place
            print(f"wrote {path} ({len(rows)} records from {release.hub_id} {release.config or ''} {split})"
                  .replace("  ", " "))
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
