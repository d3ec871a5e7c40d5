"""Device meshes and partition rules: every parameter, optimizer state and activation is placed
by rules kept in config, applied to the logical axis names the model declares.

    mesh = make_mesh("data=2,fsdp=4,tensor=1")            # -1 = the rest of the devices
    specs = param_specs(config, DEFAULT_RULES, mesh)        # PartitionSpec per parameter
    python -m neojax.sharding --preset gpt-neo-2.7B --mesh data=4,fsdp=8,tensor=1   # plan, no allocation

Axes: `data` (pure data parallel: params replicated), `fsdp` (batch and parameters sharded, ZeRO-3
style), `tensor` (attention heads, MLP columns and vocabulary split across devices).
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import sys
import threading
import time
from typing import Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax._src import distributed  # the key-value client initialize() made: jax has no public API for it
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from neojax import cli
from neojax.data import pipeline
from neojax.model.config import PRESETS, model_shape
from neojax.model.gpt_neo import logical_axes, param_shapes
from neojax.model.lora import Lora, adapter_bytes
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
def _mesh_sizes(mesh) -> dict[str, int]:
    return dict(mesh.shape) if not isinstance(mesh, dict) else mesh


def spec_for(name: str, logical: Sequence[Optional[str]], shape: Sequence[int], rules, mesh) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names. A dimension whose size the mesh
    axes do not divide is replicated (GPT-Neo's 50257-token vocabulary on a tensor axis)."""
    table = dict(rules)
    sizes = _mesh_sizes(mesh)
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


# --- inference: params, caches and batches on a mesh ---------------------------------------------
def data_parallel(mesh, rules=DEFAULT_RULES) -> int:
    """How many ways a batch is split: the product of the mesh axes `act_batch` maps to."""
    axes = dict(rules)["act_batch"] or ()
    sizes = _mesh_sizes(mesh)
    return math.prod(sizes.get(a, 1) for a in ((axes,) if isinstance(axes, str) else axes))


def mesh_of(tree) -> Optional[Mesh]:
    """The mesh a pytree's arrays are placed on (by `place`), or None (host arrays, one device)."""
    leaf = next(iter(jax.tree.leaves(tree)), None)
    sharding = getattr(leaf, "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


def on_device(tree):
    """`tree` with its host (numpy) arrays on the default device, placed arrays as they are: a
    program called with host arrays copies them in again at every call."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), tree)


def put(x, mesh: Mesh, spec=PartitionSpec()):
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
    return jax.tree.map(lambda x, s: put(x, mesh, s), params, specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


@contextlib.contextmanager
def on(mesh: Mesh, rules=DEFAULT_RULES):
    """Trace and run under `mesh`, the model's logical activation names mapped by `rules`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def gathered(x) -> np.ndarray:
    """A (global) array whole on this host: a split one gathered from every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def cache_spec(ndim: int, rules=DEFAULT_RULES) -> PartitionSpec:
    """A decoding cache's entries ([rows, heads, slots, ...]): split by head as the heads are."""
    return PartitionSpec(None, dict(rules)["heads"], *([None] * (ndim - 2)))


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


def add_distributed_options(parser) -> None:
    parser.add_argument("--coordinator", help="multi-host: coordinator address host:port")
    parser.add_argument("--num_processes", type=cli.positive_int, help="multi-host: number of processes")
    parser.add_argument("--process_id", type=cli.nonneg_int, help="multi-host: this process's index")


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


def speaks() -> bool:
    """Whether this process prints and writes for the run (process 0 of a multi-process run)."""
    return jax.process_index() == 0


# --- initialisation born sharded ------------------------------------------------------------------
def init_sharded(init_fn, mesh: Mesh, specs_fn, *args):
    """Run `init_fn(*args)` under jit with out_shardings from `specs_fn(abstract output)`: every
    array is created directly in its shards, never whole on one device."""
    abstract = jax.eval_shape(init_fn, *args)
    out = shardings(mesh, specs_fn(abstract))
    return jax.jit(init_fn, out_shardings=out)(*args)


# --- multi-host -----------------------------------------------------------------------------------
HEARTBEAT_S = 2.0  # how often each process says it is alive
LOST_AFTER_S = 30.0  # silence after which a peer is declared lost (the coordination service's own limit is longer)
SUSPECT_S = 6.0  # the same, once a collective has failed (a dead peer resets its connections at once)
LOST_EXIT = 75  # EX_TEMPFAIL: the run stopped for a reason outside it; re-running resumes
_collective_failed = threading.Event()
_closing = threading.Event()  # this process is exiting: a coordination service going away is expected


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
    """jax.distributed.initialize from arguments, else NEOJAX_COORDINATOR / NEOJAX_NUM_PROCESSES /
    NEOJAX_PROCESS_ID, else JAX's own detection (TPU pods, SLURM, Open MPI). No-op for one process.
    A multi-process run then watches its peers (see watch_peers)."""
    coordinator = coordinator or os.environ.get("NEOJAX_COORDINATOR")
    num_processes = num_processes or _env_int("NEOJAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("NEOJAX_PROCESS_ID")
    # The coordination service aborts a survivor (a C++ stack trace) after its heartbeat timeout;
    # watch_peers reports a lost peer in one line well before that.
    timeouts = dict(heartbeat_timeout_seconds=int(4 * LOST_AFTER_S), initialization_timeout=300)
    if num_processes == 1:
        return  # one process: nothing to coordinate
    if coordinator is None and num_processes is None:
        if not any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                                             "JAX_COORDINATOR_ADDRESS")):
            return  # a single-process run
        jax.distributed.initialize(**timeouts)
    else:
        # Only the CPU backend reads this (cross-process CPU collectives); asking for the platform
        # here would start the backend, which must happen after initialize().
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, **timeouts)
    if jax.process_count() > 1:
        watch_peers()


def coordination_client():
    """The key-value client of the coordination service jax.distributed runs (None: one process)."""
    return distributed.global_state.client


def watch_peers(every: float = HEARTBEAT_S, lost_after: float = LOST_AFTER_S) -> threading.Thread:
    """A daemon thread that counts up this process's heartbeat in the coordination service's key-value
    store and reads every peer's. A peer whose count stops for `lost_after` seconds (killed, its host
    gone), or a coordinator that stops answering (process 0 lost), ends this process at once with one
    line naming the lost process and exit code LOST_EXIT, even while the main thread waits inside a
    collective that will never complete. Re-running every process resumes from the last checkpoint."""
    client, me, count = distributed.global_state.client, jax.process_index(), jax.process_count()

    def lost(who: str, why: str) -> None:
        print(f"error: {who} of this {count}-process run was lost ({why}); stopping process {me} too. Re-run "
              "every process with the same command to resume from the last checkpoint", file=sys.stderr, flush=True)
        os._exit(LOST_EXIT)

    def run() -> None:
        seen = {p: (None, time.monotonic()) for p in range(count) if p != me}
        beat = 0
        while True:
            beat += 1
            try:
                client.key_value_set(f"neojax/beat/{me}", str(beat), allow_overwrite=True)
                beats = dict(client.key_value_dir_get("neojax/beat/"))
            except Exception as e:  # the coordinator (process 0) is gone, or every process is done
                time.sleep(every / 2)  # a shutdown that just stopped the service has cleared the client by now
                if _closing.is_set() or distributed.global_state.client is None:
                    return  # this process is shutting down: the service went away on purpose
                if me == 0:
                    raise
                lost("process 0 (the coordinator)", f"its coordination service stopped answering: "
                     f"{str(e).splitlines()[0][:80]}")
            now = time.monotonic()
            limit = min(lost_after, SUSPECT_S) if _collective_failed.is_set() else lost_after
            for p, (last, since) in seen.items():
                value = beats.get(f"neojax/beat/{p}")
                if value != last:
                    seen[p] = (value, now)
                elif now - since > limit:
                    lost(f"process {p}", f"no heartbeat for {now - since:.0f}s")
            if _closing.wait(every):
                return

    def close() -> None:
        # Stop the thread before the interpreter finalises: a daemon thread coming back from the
        # client's C++ call during finalisation is unwound through it, and the process aborts.
        _closing.set()
        thread.join(timeout=2 * every)

    thread = threading.Thread(target=run, name="neojax-peer-watch", daemon=True)
    atexit.register(close)  # before jax's own shutdown at exit (atexit runs last-registered first)
    thread.start()
    return thread


def blame_lost_peer() -> None:
    """Called with a failure in hand: in a multi-process run a peer that died makes the next
    collective fail at once (connection reset). Give the peer watch a few heartbeats to name the lost
    process (it then ends this process in one line); if every peer is alive, return and let the
    failure speak for itself."""
    if jax.process_count() > 1:
        _collective_failed.set()
        time.sleep(SUSPECT_S + 3 * HEARTBEAT_S)


def _env_int(name):
    return int(os.environ[name]) if name in os.environ else None


def global_batch(local_batch: np.ndarray, mesh: Mesh, rules=DEFAULT_RULES):
    """Assemble a global [batch, ...] array from this process's rows (each process reads only its share)."""
    sharding = NamedSharding(mesh, batch_spec(rules))
    return jax.make_array_from_process_local_data(sharding, local_batch)


def process_rows(global_batch_size: int) -> slice:
    """The rows of a global batch that this process loads."""
    return pipeline.process_rows(global_batch_size, jax.process_index(), jax.process_count())


# --- the plan -------------------------------------------------------------------------------------
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


LORA_TARGETS = r"attn/(q|v)_proj/kernel"  # the plan's default LoRA kernels (the lora config's default)


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
    parser.add_argument("--lora_targets", default=LORA_TARGETS, help="comma-separated regexes")
    args = parser.parse_args(argv)
    lora = None
    if args.lora_targets != LORA_TARGETS and not args.lora_rank:
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


if __name__ == "__main__":
    sys.exit(cli.run(main))
