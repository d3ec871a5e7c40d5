"""Arrays on a mesh: params placed by the rules (each process copies only its shards), host
arrays made global, results gathered, and the inference commands' --mesh."""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neojax import cli
from neojax.data import pipeline
from neojax.sharding.hosts import add_distributed_options, initialize_distributed
from neojax.sharding.rules import (
    DEFAULT_RULES,
    batch_spec,
    data_parallel,
    make_mesh,
    param_specs,
    parse_mesh,
    resolve_mesh_shape,
)
from neojax.tree import named_leaves, path_name


def mesh_of(tree) -> Optional[Mesh]:
    """The mesh a pytree's arrays are placed on (by `place`), or None (host arrays, one device)."""
    leaf = next(iter(jax.tree.leaves(tree)), None)
    sharding = getattr(leaf, "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


def on_device(tree):
    """`tree` with its host (numpy) arrays on the default device, placed arrays as they are: a
    program called with host arrays copies them in again at every call."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), tree)


def put_global(x, mesh: Mesh, spec=PartitionSpec()):
    """A host array (the same on every process) as one global array split by `spec`: each process
    copies only the shards its own devices hold."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])


def inference_specs(params, config, rules=DEFAULT_RULES, mesh=None):
    """PartitionSpecs for the params an inference command runs: the training rules' specs, and for
    int8 weights (neojax.model.quant) each scale split as its kernel's output (or wte's rows)."""
    specs = named_leaves(param_specs(config, rules, mesh), is_leaf=lambda x: isinstance(x, PartitionSpec))

    def one(path, leaf):
        name = path_name(path)
        if name in specs:
            return specs[name]
        if name.endswith("kernel_scale"):
            return PartitionSpec(*specs[name[:-len("_scale")]][-1:])
        if name == "wte_scale":
            return PartitionSpec(*specs["wte"][:1])
        return PartitionSpec()  # anything else (none today) is replicated
    return jax.tree_util.tree_map_with_path(one, params)


def place(params, config, mesh: Mesh, rules=DEFAULT_RULES):
    """Params (host arrays) as global arrays in their shards on `mesh`, by the training rules: no
    device ever holds a split parameter whole. A ValueError when `mesh` cannot split the heads."""
    check_inference_mesh(dict(mesh.shape), config)
    specs = inference_specs(params, config, rules, mesh)
    return jax.tree.map(lambda x, s: put_global(x, mesh, s), params, specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


@contextlib.contextmanager
def using_mesh(mesh: Mesh, rules=DEFAULT_RULES):
    """Trace and run under `mesh`, the model's logical activation names mapped by `rules`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def gathered(x) -> np.ndarray:
    """A (global) array whole on this host: a split one gathered from every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_inference_mesh(sizes: dict, config, rows: Optional[int] = None, rows_name: str = "the batch") -> None:
    """A ValueError before any weight is read when `sizes` cannot split this model or batch."""
    if config.num_heads % sizes["tensor"]:
        raise ValueError(f"tensor={sizes['tensor']} does not divide the model's {config.num_heads} attention heads; "
                         f"use a divisor (e.g. tensor={math.gcd(config.num_heads, sizes['tensor'])})")
    split = data_parallel(sizes)
    if rows is not None and rows % split:
        raise ValueError(f"data x fsdp = {split} does not divide {rows_name} ({rows}); use a multiple of {split}")


def auto_mesh(configs, num_devices: int, replicas: bool = True) -> dict[str, int]:
    """Heads split over as many devices as divide them (every model's: a config or several; up to 8,
    one host's chips) and, with `replicas`, the batch over the rest (every device); without, those
    devices alone (a server's one engine)."""
    heads = math.gcd(*[c.num_heads for c in (configs if isinstance(configs, (list, tuple)) else [configs])])
    fits = [t for t in range(1, min(num_devices, 8) + 1) if heads % t == 0]
    tensor = max(t for t in fits if num_devices % t == 0 or not replicas)
    return {"data": num_devices // tensor if replicas else 1, "fsdp": 1, "tensor": tensor}


def add_mesh_options(parser, default: str = "data=-1", hosts: bool = True) -> None:
    """--mesh and (`hosts`) the multi-host flags of an inference command (see inference_mesh)."""
    parser.add_argument("--mesh", default=default, help="devices as data=D,fsdp=F,tensor=T (-1: the rest; 'auto': "
                        "heads over up to 8 devices that divide them, the batch over the rest); default "
                        f"{default}, every device{' of every process' if hosts else ''}")
    if hosts:
        add_distributed_options(parser)


def inference_mesh(args, shapes: Sequence, rows: Optional[int] = None, rows_flag: str = "--batch_size",
                   replicas: bool = True) -> Mesh:
    """The mesh of an inference command's --mesh for models of these configs (read without their
    weights; None: not known before loading), after jax.distributed starts from its flags; a mesh
    that cannot split a model's heads or `rows` is one line naming the flags, before any weight is
    read. `replicas`: whether 'auto' splits rows over the devices the heads leave (not for a
    server's single engine on one host; a mesh over several processes takes all of their devices)."""
    shapes = [config for config in shapes if config is not None]
    initialize_distributed(coordinator=getattr(args, "coordinator", None),
                           num_processes=getattr(args, "num_processes", None),
                           process_id=getattr(args, "process_id", None))
    count = jax.device_count()
    try:
        if args.mesh == "auto":
            replicas = replicas or jax.process_count() > 1
            sizes = auto_mesh(shapes, count, replicas) if shapes else {"data": count, "fsdp": 1, "tensor": 1}
            count = math.prod(sizes.values())
        else:
            sizes = parse_mesh(args.mesh)
            # one process may run on fewer of its devices (e.g. data=1: one device, to compare)
            used = math.prod(sizes.values())
            if -1 not in sizes.values() and used < count and jax.process_count() == 1:
                count = used
            sizes = resolve_mesh_shape(sizes, count)
        for config in shapes:
            check_inference_mesh(sizes, config, rows, f"{rows_flag} {rows}")
    except ValueError as e:
        raise cli.UsageError(f"--mesh {args.mesh}: {e}") from None
    return make_mesh(spec=sizes, devices=jax.devices()[:count])


def is_lead_process() -> bool:
    """Whether this process prints and writes for the run (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def global_batch(local_batch: np.ndarray, mesh: Mesh, rules=DEFAULT_RULES):
    """Assemble a global [batch, ...] array from this process's rows (each process reads only its share)."""
    sharding = NamedSharding(mesh, batch_spec(rules))
    return jax.make_array_from_process_local_data(sharding, local_batch)


def process_rows(global_batch_size: int) -> slice:
    """The rows of a global batch that this process loads."""
    return pipeline.process_rows(global_batch_size, jax.process_index(), jax.process_count())
