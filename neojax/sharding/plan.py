"""python -m neojax.sharding: the sharding plan of a model on a mesh, from shapes alone.

    python -m neojax.sharding --preset gpt-neo-2.7B --mesh data=4,fsdp=8,tensor=1   # plan, no allocation
"""
from __future__ import annotations

import math
import re
from typing import Optional

import jax
from jax.sharding import PartitionSpec

from neojax import cli
from neojax.model.config import PRESETS, model_shape
from neojax.model.gpt_neo import param_shapes
from neojax.model.lora import DEFAULT_TARGETS, Lora, adapter_bytes
from neojax.sharding.rules import DEFAULT_RULES, param_specs, parse_mesh, resolve_mesh_shape
from neojax.tree import named_leaves


def plan(config, mesh_spec, rules=DEFAULT_RULES, optimizer_moments: int = 2, num_devices: Optional[int] = None,
         lora=None):
    """Rows (name, shape, spec, bytes per device) and totals, from shapes alone (nothing allocated).

    optimizer_moments: float32 copies of the trained params the optimizer keeps (Adam: 2). With a
    `neojax.model.lora.Lora`, only its (replicated) adapters are trained and have moments."""
    sizes = parse_mesh(mesh_spec)
    if -1 in sizes.values() or num_devices is not None:  # a given device count must agree with the mesh
        sizes = resolve_mesh_shape(sizes, num_devices or jax.device_count())
    specs = param_specs(config, rules, sizes)
    rows = []
    specs = named_leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for name, shape in named_leaves(param_shapes(config)).items():
        spec = specs[name]
        split = math.prod(sizes[a] for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry))
        rows.append((name, tuple(shape.shape), spec, shape.size * shape.dtype.itemsize / split))
    param_bytes = trained_bytes = sum(r[3] for r in rows)
    if lora is not None:
        trained_bytes = adapter_bytes(param_shapes(config), lora)
        param_bytes += trained_bytes
    return {"mesh": sizes, "rows": rows, "params_per_device": param_bytes,
            "optimizer_per_device": optimizer_moments * trained_bytes,
            "total_per_device": param_bytes + optimizer_moments * trained_bytes,
            "num_params": sum(math.prod(r[1]) for r in rows), "lora": lora,
            "trained_params": trained_bytes // 4 if lora is not None else sum(math.prod(r[1]) for r in rows)}


def format_plan(p, full: bool = False) -> str:

    lines = [f"mesh {p['mesh']}  ({math.prod(p['mesh'].values())} devices), {p['num_params'] / 1e9:.3f}B parameters",
             f"{'parameter':<34} {'shape':<16} {'spec':<28} {'MB/device':>10}"]
    seen = {}
    for name, shape, spec, b in p["rows"]:
        key = name if full else re.sub(r"^h_\d+/", "h_*/", name)
        if key in seen:
            seen[key][3] += 1
            continue
        seen[key] = [shape, spec, b, 1]
    for key, (shape, spec, b, count) in seen.items():
        label = key if count == 1 else f"{key} (x{count})"
        lines.append(f"{label:<34} {str(shape):<16} {str(tuple(spec)):<28} {b / 2**20:>10.2f}")
    gb = lambda x: f"{x / 2**30:.2f} GB"
    if p["lora"] is not None:
        lines.append(f"LoRA rank {p['lora'].rank} on {list(p['lora'].targets)}: "
                     f"{p['trained_params'] / 1e6:.2f}M trained "
                     "parameters (replicated); the base is frozen and has no optimizer state")
    lines.append(f"per device: params {gb(p['params_per_device'])} + optimizer state {gb(p['optimizer_per_device'])} "
                 f"= {gb(p['total_per_device'])} (float32; activations not included)")
    return "\n".join(lines)


def _shape(name_or_path: str):
    with cli.about(f"--preset {name_or_path}"):
        return model_shape(name_or_path)


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m neojax.sharding",
                                description="Print the sharding plan of a preset on a mesh (allocates nothing).")
    parser.add_argument("--preset", default="gpt-neo-125M", help=f"a preset ({', '.join(PRESETS)}) or a checkpoint "
                        "or workdir (its shape; its weights are not read)")
    parser.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1", help="e.g. data=4,fsdp=8,tensor=1")
    parser.add_argument("--devices", type=cli.positive_int, help="device count (default: this machine's)")
    parser.add_argument("--optimizer_moments", type=cli.nonneg_int, default=2, help="float32 param copies (Adam: 2)")
    parser.add_argument("--full", action="store_true", help="one row per parameter, layers not grouped")
    parser.add_argument("--lora_rank", type=cli.nonneg_int, default=0, help="> 0: plan LoRA fine-tuning of this rank")
    parser.add_argument("--lora_targets", default=",".join(DEFAULT_TARGETS), help="comma-separated regexes")
    args = parser.parse_args(argv)
    lora = None
    if args.lora_targets != ",".join(DEFAULT_TARGETS) and not args.lora_rank:
        raise cli.UsageError("--lora_targets chooses the kernels of a LoRA plan; add --lora_rank R or drop it")
    if args.lora_rank:
        targets = tuple(t for t in args.lora_targets.split(",") if t)
        for target in targets:
            try:
                re.compile(target)
            except re.error as e:
                raise cli.UsageError(f"--lora_targets: {target!r} is not a regular expression ({e})") from None
        lora = Lora(args.lora_rank, targets=targets)
    try:
        sizes = parse_mesh(args.mesh)
        if -1 in sizes.values() or args.devices:  # without --devices a plan may be for a bigger machine
            resolve_mesh_shape(sizes, args.devices or jax.device_count())
    except ValueError as e:
        raise cli.UsageError(f"--mesh {args.mesh}{f' with --devices {args.devices}' if args.devices else ''}: {e}") \
            from None
    try:
        result = plan(_shape(args.preset), args.mesh, DEFAULT_RULES, args.optimizer_moments, args.devices, lora)
    except ValueError as e:
        raise cli.UsageError(f"--lora_targets {args.lora_targets}: {e}" if lora else str(e)) from None
    print(format_plan(result, args.full))
    return 0
