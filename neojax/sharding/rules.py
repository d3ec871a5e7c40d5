"""Meshes and partition rules: every parameter, optimizer state, activation and cache is placed by
rules kept in config, applied to the logical axis names the model declares.

Axes: `data` (pure data parallel: params replicated), `fsdp` (batch and parameters sharded, ZeRO-3
style), `tensor` (attention heads, MLP columns and vocabulary split across devices).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from neojax.model.gpt_neo import logical_axes, param_shapes
from neojax.tree import named_leaves, path_keys, path_name

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis name, mesh axes or None). Parameters: model/gpt_neo.py; activations: act_*.
DEFAULT_RULES: tuple = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("position", None),
    ("labels", None),  # classification heads: a handful of classes, replicated
)


# --- meshes ---------------------------------------------------------------------------------------
def parse_mesh(spec) -> dict[str, int]:
    """'data=4,fsdp=8,tensor=1' or a mapping -> {axis: size} over MESH_AXES (missing axes are 1)."""
    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, size = part.partition("=")
            if name.strip() in items:
                raise ValueError(f"mesh {spec!r}: axis {name.strip()!r} is given twice; name each axis once")
            try:
                items[name.strip()] = int(size)
            except ValueError:
                raise ValueError(f"mesh {spec!r}: {part!r} is not axis=size (e.g. data=4,fsdp=8,tensor=1)") from None
        spec = items
    spec = dict(spec)
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes: {list(MESH_AXES)}")
    sizes = {axis: int(spec.get(axis, 1)) for axis in MESH_AXES}
    if sum(s == -1 for s in sizes.values()) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"mesh {spec}: sizes must be positive, with at most one -1 (the rest of the devices)")
    return sizes


def resolve_mesh_shape(spec, num_devices: int) -> dict[str, int]:
    sizes = parse_mesh(spec)
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if num_devices % known:
            raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by {known}")
        sizes = {a: (num_devices // known if s == -1 else s) for a, s in sizes.items()}
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices but {num_devices} are present; "
                         "use -1 for one axis to take the rest")
    return sizes


def make_mesh(spec="data=-1", devices: Optional[Sequence] = None) -> Mesh:
    """A Mesh over all (global, multi-host) devices, laid out by jax for the topology."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = resolve_mesh_shape(spec, len(devices))
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)



# --- rules -> specs -------------------------------------------------------------------------------
def mesh_sizes(mesh) -> dict[str, int]:
    return dict(mesh.shape) if not isinstance(mesh, dict) else mesh


def spec_for(name: str, logical: Sequence[Optional[str]], shape: Sequence[int], rules, mesh) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names. A dimension whose size the mesh
    axes do not divide is replicated (GPT-Neo's 50257-token vocabulary on a tensor axis)."""
    table = dict(rules)
    sizes = mesh_sizes(mesh)
    used: set[str] = set()
    out = []
    for axis_name, dim in zip(logical, shape):
        if axis_name is None:
            out.append(None)
            continue
        if axis_name not in table:
            raise ValueError(f"parameter {name} has logical axis {axis_name!r} that no sharding rule maps; add "
                             f"({axis_name!r}, <mesh axis or None>) to the rules (known: {sorted(table)})")
        target = table[axis_name]
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        axes = tuple(a for a in axes if sizes.get(a, 1) > 1 and a not in used)
        if axes and dim % math.prod(sizes[a] for a in axes):
            axes = ()
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def param_specs(config, rules=DEFAULT_RULES, mesh=None):
    """Tree of PartitionSpecs for every parameter of `config`."""
    shapes, axes = param_shapes(config), logical_axes(config)
    flat_axes = named_leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec))

    def one(path, shape):
        name = path_name(path)
        return spec_for(name, tuple(flat_axes[name]), shape.shape, rules, mesh)
    return jax.tree_util.tree_map_with_path(one, shapes)


def state_specs(abstract_state, params_specs):
    """Specs for a pytree that contains parameter-shaped subtrees (optimizer moments, EMA, ...):
    a leaf whose path ends with a parameter's path (and has at least the spec's rank) gets that
    parameter's spec; everything else (step counters, scalars) is replicated."""
    by_path = {path_keys(path): spec for path, spec in
               jax.tree_util.tree_leaves_with_path(params_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))}

    def pick(path, leaf):
        keys = path_keys(path)
        for n in range(len(keys)):
            spec = by_path.get(keys[n:])
            if spec is not None and len(spec) <= len(np.shape(leaf)):
                return spec
        return PartitionSpec()
    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def shardings(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_spec(rules=DEFAULT_RULES) -> PartitionSpec:
    """How a [batch, time] token batch is split: batch over the data-parallel axes."""
    return PartitionSpec(dict(rules)["act_batch"])


def data_parallel(mesh, rules=DEFAULT_RULES) -> int:
    """How many ways a batch is split: the product of the mesh axes `act_batch` maps to."""
    axes = dict(rules)["act_batch"] or ()
    sizes = mesh_sizes(mesh)
    return math.prod(sizes.get(a, 1) for a in ((axes,) if isinstance(axes, str) else axes))


def cache_spec(ndim: int, rules=DEFAULT_RULES) -> PartitionSpec:
    """A decoding cache's entries ([rows, heads, slots, ...]): split by head as the heads are."""
    return PartitionSpec(None, dict(rules)["heads"], *([None] * (ndim - 2)))


def init_sharded(init_fn, mesh: Mesh, specs_fn, *args):
    """Run `init_fn(*args)` under jit with out_shardings from `specs_fn(abstract output)`: every
    array is created directly in its shards, never whole on one device."""
    abstract = jax.eval_shape(init_fn, *args)
    out = shardings(mesh, specs_fn(abstract))
    return jax.jit(init_fn, out_shardings=out)(*args)
