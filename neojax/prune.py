"""Prune a GPT-Neo checkpoint, or measure compression against quality.

    python -m neojax.prune --checkpoint PATH --method magnitude --sparsity 0.5 [--scope layer] --output DST
    python -m neojax.prune --checkpoint PATH --method 2:4 --output DST
    python -m neojax.prune --checkpoint PATH --report report.json --text_files 'valid/*.txt'
        [--tasks lambada_openai --data_dir tasks/] [--sparsities 0.1,0.3,0.5,0.7] [--mesh data=-1]

Pruning zeroes the blocks' matmul kernels (attention q/k/v/out, MLP): magnitude (the smallest |w|,
over all kernels together or per layer) or 2:4 (2 of every 4 inputs). A pruned model recovers by
fine-tuning with its zeros kept: experiments/prune_finetune.py (train.keep_zeros).
The report measures, for float32, int8 weights, an int8 KV cache, and each pruning method and
sparsity: parameters, bytes, validation perplexity and the given harness tasks, and plots
perplexity against sparsity (report.png).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import numpy as np

from neojax import checkpoint, cli, paths, sharding
from neojax import evaluate as ev
from neojax.data import sources
from neojax.files import write_json
from neojax.infer.programs import cached_logprobs
from neojax.model.quant import param_bytes, quantize_params
from neojax.model.sparsity import apply_masks, magnitude_masks, sparsity, two_four_masks

METHODS = ("magnitude", "2:4")
SPARSITIES = "0.1,0.3,0.5,0.7"  # the report's magnitude levels


def check_pruning(method: str, sparsity_: float) -> None:
    """A ValueError naming what is wrong with a pruning request (before any model is read)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose {' or '.join(METHODS)}")
    if not 0 <= sparsity_ < 1:
        raise ValueError(f"sparsity={sparsity_}: must lie in [0, 1) (the share of weights zeroed)")
    if method == "2:4" and sparsity_ != 0.5:
        raise ValueError(f"sparsity={sparsity_}: 2:4 is 50% sparse by construction (give 0.5 or leave it out)")


def prune(params, method: str, sparsity_: float = 0.5, scope: str = "global"):
    """Params with the method's masks applied."""
    check_pruning(method, sparsity_)
    if method == "2:4":
        return apply_masks(params, two_four_masks(params))
    return apply_masks(params, magnitude_masks(params, sparsity_, scope))


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m neojax.prune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="HF directory, neojax directory or training workdir")
    parser.add_argument("--method", help="magnitude or 2:4")
    parser.add_argument("--sparsity", type=float, help="share of the kernels' weights to zero, in [0, 1)")
    parser.add_argument("--scope", default="global", choices=["global", "layer"], help="magnitude: where to rank")
    parser.add_argument("--output", help="the pruned model (a neojax directory)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--report", help="JSON report of compression against quality (and a PNG next to it)")
    parser.add_argument("--text_files", help="validation text for the report's perplexity (glob)")
    parser.add_argument("--jsonl", help="validation .jsonl(.zst) for the report's perplexity (glob)")
    parser.add_argument("--tasks", default="", help="harness tasks for the report (files in --data_dir)")
    parser.add_argument("--data_dir", default=".")
    parser.add_argument("--limit", type=cli.nonneg_int, default=0, help="first N examples per task / texts")
    parser.add_argument("--sparsities", default=SPARSITIES, help="magnitude sparsities in the report")
    parser.add_argument("--batch_size", type=cli.positive_int, help="the report's scoring rows per step, a multiple "
                        "of the mesh's data x fsdp (default: 8 per data-parallel device)")
    sharding.add_mesh_options(parser)  # the report's: every variant is scored on every device
    args = parser.parse_args(argv)
    args.checkpoint = cli.existing_path("--checkpoint", args.checkpoint)
    _check_modes(args)
    if args.report:
        return _report(args)
    if args.method == "magnitude" and args.sparsity is None:
        raise cli.UsageError("--method magnitude needs --sparsity S, a share in [0, 1) (e.g. 0.5)")
    s = 0.5 if args.sparsity is None else args.sparsity
    with cli.about(f"--method {args.method} --sparsity {s}"):
        check_pruning(args.method, s)
    if not args.output:
        raise cli.UsageError("--output DST is required: where to write the pruned model")
    cli.apart("--output", args.output, "--checkpoint", args.checkpoint)
    cli.writable_folder("--output", args.output, args.overwrite)
    with cli.about(f"--checkpoint {args.checkpoint}"):
        model = checkpoint.load(args.checkpoint)
    params = prune(model.params, args.method, s, args.scope)
    with cli.about(f"--output {args.output}"):
        checkpoint.save(args.output, model._replace(params=params), to="neojax", overwrite=args.overwrite)
    print(f"wrote {args.output}: {args.method} pruning, {sparsity(params):.2%} of the block kernels' weights are zero")
    return 0


def _check_modes(args) -> None:
    """Pruning (--output) and the report (--report) take different options: one given to the other
    would be ignored, so it is refused by name."""
    pruning = [f for f, given in (("--output", args.output), ("--method", args.method),
                                  ("--sparsity", args.sparsity is not None), ("--overwrite", args.overwrite),
                                  ("--scope", args.scope != "global")) if given]
    reporting = [f for f, given in (("--text_files", args.text_files), ("--jsonl", args.jsonl), ("--tasks", args.tasks),
                                    ("--data_dir", args.data_dir != "."), ("--limit", args.limit),
                                    ("--sparsities", args.sparsities != SPARSITIES),
                                    ("--batch_size", args.batch_size), ("--mesh", args.mesh != "data=-1"),
                                    *((f, getattr(args, f[2:]) is not None)
                                      for f in ("--coordinator", "--num_processes", "--process_id"))) if given]
    if args.report and pruning:
        raise cli.UsageError(f"--report measures every variant and writes no model; drop {', '.join(pruning)} (prune "
                             "in a command of its own)")
    if not args.report and reporting:
        raise cli.UsageError(f"{', '.join(reporting)}: options of --report; add --report FILE.json or drop them")
    if args.method == "2:4" and args.scope != "global":
        raise cli.UsageError("--scope ranks weights for --method magnitude; 2:4 keeps 2 of every 4 in place: drop it")
    if args.report:
        cli.require("matplotlib", "--report (its chart)", "matplotlib")


def _report(args) -> int:
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not (args.text_files or args.jsonl):
        raise cli.UsageError("--report needs validation text: --text_files GLOB or --jsonl GLOB")
    try:
        levels = [float(x) for x in args.sparsities.split(",") if x.strip()]
    except ValueError:
        raise cli.UsageError(f"--sparsities {args.sparsities}: give numbers in [0, 1), comma-separated") from None
    if not levels or not all(0 <= x < 1 for x in levels):
        raise cli.UsageError(f"--sparsities {args.sparsities}: give numbers in [0, 1), comma-separated")
    cli.writable_output("--report", args.report)
    with cli.about("--text_files" if args.text_files else "--jsonl"):
        texts = list(sources.text_files(args.text_files) if args.text_files else sources.jsonl(args.jsonl))
    texts = texts[:args.limit] if args.limit else texts
    loaded = {t: ev.load_task(args.data_dir, t) for t in task_names}
    with cli.about(f"--checkpoint {args.checkpoint}"):
        stated = checkpoint.stated_shape(args.checkpoint)
    mesh = sharding.inference_mesh(args, [stated], args.batch_size)
    batch_size = args.batch_size or 8 * sharding.data_parallel(mesh)
    with cli.about(f"--checkpoint {args.checkpoint}"):
        model = checkpoint.load(args.checkpoint)
    with cli.about(f"--mesh {args.mesh}"):
        sharding.check_inference_mesh(dict(mesh.shape), model.config)
    base_params, base_config = model.params, model.config
    # (label, config, params made when measured, sparsity)
    variants = [("float32", base_config, lambda: base_params, 0.0),
                ("int8 weights", base_config, lambda: jax.device_get(quantize_params(base_params)), 0.0),
                ("int8 KV cache", base_config.replace(kv_cache="int8"), lambda: base_params, 0.0)]
    variants += [(f"magnitude {s:.0%}", base_config, functools.partial(prune, base_params, "magnitude", s), s)
                 for s in levels]
    variants += [("2:4", base_config, functools.partial(prune, base_params, "2:4"), 0.5)]
    rows = []
    for label, config, make_params, level in variants:
        params = sharding.place(make_params(), config, mesh)
        scorer = ev.Scorer(params, config, model.tokenizer, batch_size, label=f"{label} perplexity")
        row = {"variant": label, "sparsity": level, "bytes": param_bytes(params),
               "perplexity": ev.perplexity_of_texts(scorer, texts)["perplexity"],
               "cached_perplexity": _cached_perplexity(params, config, model.tokenizer, texts)}
        results = ev.evaluate(params, config, model.tokenizer, task_names, args.data_dir, limit=args.limit,
                              batch_size=batch_size, loaded=loaded)
        for task, metrics in results.items():
            for key in ("acc", "perplexity", "bleu"):
                if key in metrics:
                    row[f"{task}/{key}"] = metrics[key]
        rows.append(row)
        if sharding.is_lead_process():
            print(f"  {label}: {row['bytes'] / 1e6:.1f} MB, perplexity {row['perplexity']:.3f}", flush=True)
    base = rows[0]
    for row in rows:
        row["bytes_vs_float32"] = row["bytes"] / base["bytes"]
        row["perplexity_change"] = row["perplexity"] / base["perplexity"] - 1
    if not sharding.is_lead_process():
        return 0  # process 0 writes the report
    print(_table(rows))
    chart = os.path.splitext(args.report)[0] + ".png"
    with paths.local_file(chart) as local:
        _plot(rows, local)
    write_json(args.report, {"checkpoint": str(paths.path(args.checkpoint)), "rows": rows, "chart": chart})
    print(f"wrote {args.report} and {chart}")
    return 0


def _cached_perplexity(params, config, tokenizer, texts, length: int = 256) -> float:
    """Perplexity of each text's first `length` tokens through the decoding path (prefill, then one
    decode step per token through the KV cache): what an int8 cache changes, which the full-sequence
    scoring above never reads."""
    encoded = [tokenizer.encode(t) for t in texts]
    length = min(length, config.max_position_embeddings, max(len(ids) for ids in encoded))
    rows = np.array([ids[:length] for ids in encoded if len(ids) >= length], np.int32)
    mesh = sharding.mesh_of(params)
    if mesh is not None:
        rows = sharding.put_global(rows, mesh)
    logprobs = sharding.gathered(jax.jit(cached_logprobs, static_argnums=1)(params, config, rows))
    return float(np.exp(-np.mean(np.asarray(logprobs, np.float64))))


def _table(rows) -> str:
    keys = [k for k in rows[0] if "/" in k]
    extra = "".join(f" {k} |" for k in keys)
    lines = ["| variant | MB | x float32 | perplexity | change | decoding-path perplexity |" + extra,
             "|---|---|---|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['bytes'] / 1e6:.1f} | {r['bytes_vs_float32']:.2f} | {r['perplexity']:.3f} "
                     f"| {r['perplexity_change']:+.2%} | {r['cached_perplexity']:.3f} |"
                     + "".join(f" {r[k]:.4f} |" for k in keys))
    return "\n".join(lines)


def _plot(rows, path) -> None:
    plt = cli.require("matplotlib.pyplot", "the report's plot", "matplotlib")  # deferred: optional
    fig, ax = plt.subplots(figsize=(6, 4))
    base = rows[0]["perplexity"]
    magnitude = [(0.0, base)] + [(r["sparsity"], r["perplexity"]) for r in rows if r["variant"].startswith("magn")]
    ax.plot(*zip(*magnitude), "o-", label="magnitude (global)")
    ax.plot([0.5], [next(r["perplexity"] for r in rows if r["variant"] == "2:4")], "s", label="2:4")
    ax.axhline(base, color="grey", lw=1, ls="--", label="float32")
    ax.set_xlabel("sparsity of the block kernels")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(cli.run(main))
