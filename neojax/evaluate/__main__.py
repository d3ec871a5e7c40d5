"""python -m neojax.evaluate --checkpoint PATH --tasks lambada_openai,wikitext,... --data_dir DIR
    [--num_fewshot N] [--limit N] [--batch_size B] [--output results.json]
python -m neojax.evaluate --checkpoint PATH --text_files 'val/*.txt' | --jsonl 'pile/val.jsonl.zst' [--stride S]
python -m neojax.evaluate --paper_table --checkpoint A --checkpoint B --data_dir DIR [--output table.json]

PATH is a Hugging Face directory, a neojax directory or a training workdir. Task files are
<task>.jsonl (and <task>.train.jsonl for few-shot) in data_dir; `pile.jsonl(.zst)` there feeds
the Pile BPB/PPL columns of the paper table. piqa, winogrande and mathqa can instead read TFDS
datasets already prepared in --tfds_data_dir (never downloaded).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from neojax import __version__, checkpoint, registry
from neojax import evaluate as ev
from neojax.data import sources
from neojax.evaluate.tasks import available


def _texts(args) -> list[str]:
    if args.text_files:
        return list(sources.text_files(args.text_files))
    return list(sources.jsonl(args.jsonl, text_field=args.text_field))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neojax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--tasks", default="", help=f"comma-separated: {', '.join(registry.names('task'))}")
    parser.add_argument("--data_dir", default=".")
    parser.add_argument("--tfds_data_dir", help="prepared TFDS datasets, for tasks without a jsonl in data_dir")
    parser.add_argument("--num_fewshot", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_len", type=int, default=0, help="context length (default: the model's)")
    parser.add_argument("--text_files", help="glob of text files: perplexity and bits per byte")
    parser.add_argument("--jsonl", help="glob of .jsonl(.zst): perplexity and bits per byte")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--stride", type=int, default=0, help="new tokens per rolling window (default max_len)")
    parser.add_argument("--paper_table", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    try:
        out = _run(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.output}")
    return 0


def _run(args) -> dict:
    task_names = [t for t in args.tasks.split(",") if t]
    for t in task_names:
        registry.get("task", t)
    rows, results_all = {}, {}
    for path in args.checkpoint:
        model = checkpoint.load(path, dtype=args.dtype)
        if model.tokenizer is None:
            raise ValueError(f"{path} has no tokenizer; add tokenizer.json (or vocab.json + merges.txt)")
        max_len = args.max_len or None
        if args.paper_table:
            names = task_names or [t for t in registry.names("task") if available(t, args.data_dir, args.tfds_data_dir)]
        else:
            names = task_names
        results = ev.evaluate(model.params, model.config, model.tokenizer, names, args.data_dir, args.num_fewshot,
                              args.limit, args.batch_size, max_len, args.tfds_data_dir)
        pile = [p for p in (os.path.join(args.data_dir, "pile.jsonl"), os.path.join(args.data_dir, "pile.jsonl.zst"))
                if os.path.exists(p)]
        texts = _texts(args) if (args.text_files or args.jsonl) else (
            list(sources.jsonl(pile[0])) if args.paper_table and pile else None)
        if texts is not None:
            scorer = ev.Scorer(model.params, model.config, model.tokenizer, args.batch_size, max_len)
            key = "pile" if args.paper_table and not (args.text_files or args.jsonl) else "perplexity"
            results[key] = ev.perplexity_of_texts(scorer, texts[:args.limit] if args.limit else texts, args.stride or None)
        for task, metrics in results.items():
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and not k.endswith("seconds")}
            print(f"{path} {task}: {shown}")
        results_all[path] = results
        rows[path] = (ev.published_row(model.config), results)
    meta = {"neojax_version": __version__, "data_dir": os.path.abspath(args.data_dir),
            "data_files": sorted(glob.glob(os.path.join(args.data_dir, "*.jsonl*"))), "num_fewshot": args.num_fewshot,
            "tfds_data_dir": args.tfds_data_dir and os.path.abspath(args.tfds_data_dir)}
    if args.paper_table:
        table = ev.paper_table(rows)
        print(ev.format_table(table))
        return {"table": table, "results": results_all, **meta}
    only = args.checkpoint[0]
    return {**results_all[only], "config": {"checkpoint": os.path.abspath(only), **meta}}


if __name__ == "__main__":
    sys.exit(main())
