"""Device meshes and where arrays live on them, by job:

- `rules`: meshes, and the partition rules that map the model's logical axis names to mesh axes;
- `placement`: params, batches and caches on a mesh, results gathered, the inference commands' --mesh;
- `hosts`: the multi-host lifecycle (jax.distributed, the watch over lost peers);
- `plan`: `python -m neojax.sharding`, a model's sharding plan from shapes alone.

    mesh = make_mesh("data=2,fsdp=4,tensor=1")            # -1 = the rest of the devices
    specs = param_specs(config, DEFAULT_RULES, mesh)        # PartitionSpec per parameter
"""
from neojax.sharding.hosts import (
    LOST_EXIT,
    PeerWatch,
    add_distributed_options,
    coordination_client,
    initialize_distributed,
)
from neojax.sharding.placement import (
    add_mesh_options,
    auto_mesh,
    check_inference_mesh,
    gathered,
    global_batch,
    inference_mesh,
    inference_specs,
    is_lead_process,
    mesh_of,
    on_device,
    place,
    process_rows,
    put_global,
    using_mesh,
)
from neojax.sharding.plan import format_plan, main, plan
from neojax.sharding.rules import (
    DEFAULT_RULES,
    MESH_AXES,
    batch_spec,
    cache_spec,
    data_parallel,
    init_sharded,
    make_mesh,
    param_specs,
    parse_mesh,
    resolve_mesh_shape,
    shardings,
    spec_for,
    state_specs,
)

__all__ = ["DEFAULT_RULES", "LOST_EXIT", "MESH_AXES", "PeerWatch", "add_distributed_options", "add_mesh_options",
           "auto_mesh", "batch_spec", "cache_spec", "check_inference_mesh", "coordination_client", "data_parallel",
           "format_plan", "gathered", "global_batch", "inference_mesh", "inference_specs", "init_sharded",
           "initialize_distributed", "is_lead_process", "main", "make_mesh", "mesh_of", "on_device", "param_specs",
           "parse_mesh", "place", "plan", "process_rows", "put_global", "resolve_mesh_shape", "shardings", "spec_for",
           "state_specs", "using_mesh"]
