"""Mesh rows: evaluation and serving on meshes of 1, 2, 4, ... devices against the unplaced path."""
from __future__ import annotations

import jax

from neojax import sharding
from neojax.benchmark.common import Workload, row
from neojax.benchmark.evaluation import bench_eval
from neojax.benchmark.serving import concurrent_streams, serve_workload


def bench_mesh(config, params, counts, work: Workload = Workload()):
    """Evaluation and serving on meshes of `counts` devices: lambada_openai examples/s and wikitext
    tokens/s with the requests split over data=n (batch 8 per device), serving tokens/s with the
    model split over tensor=n (16 streams), and the same rows of the unplaced single-device path
    (what the sharded path at one device is held to)."""
    host = jax.device_get(params)
    docs = {"lambada_docs": work.lambada_docs, "wiki_pages": work.wiki_pages, "translate": False}
    out = {"single": bench_eval(config, host, **docs)}
    clients, new_tokens = work.clients, work.serve_tokens
    _, tokenizer, prompts, max_len, _ = serve_workload(config, clients, new_tokens, 512)
    (out["single"]["serve"], _), = concurrent_streams(host, config, tokenizer, [prompts], max_len, new_tokens)
    for n in counts:
        placed = sharding.place(host, config, sharding.make_mesh({"data": n}, jax.devices()[:n]))
        out[("data", n)] = bench_eval(config, placed, batch_size=8 * n, **docs)
        if config.num_heads % n == 0:
            placed = sharding.place(host, config, sharding.make_mesh({"tensor": n}, jax.devices()[:n]))
            (out[("tensor", n)], _), = concurrent_streams(placed, config, tokenizer, [prompts], max_len, new_tokens)
        del placed
    return out


def rows(run) -> None:
    name, config = run.name, run.config
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= jax.device_count()]
    meshes = bench_mesh(config, run.params, counts, run.work)
    streams = f"{run.work.clients} concurrent streams"
    one = meshes["single"]
    run.add(row(f"evaluate lambada_openai {name}, one device unplaced (batch 8)", "examples/s", one["lambada"]))
    run.add(row(f"evaluate wikitext {name}, one device unplaced", "tokens/s", one["wikitext"]))
    run.add(row(f"serve {name} {run.args.dtype}, {streams}, one device unplaced", "tokens/s",
                one["serve"]))
    for n in counts:
        rates = meshes[("data", n)]
        run.add(row(f"evaluate lambada_openai {name}, mesh data={n} (batch {8 * n})", "examples/s", rates["lambada"]))
        run.add(row(f"evaluate wikitext {name}, mesh data={n}", "tokens/s", rates["wikitext"]))
        if n == 1:
            run.add(row("evaluate: the sharded path at one device against the unplaced path (lambada_openai, "
                        "wikitext)", "%", 100 * min(rates["lambada"] / one["lambada"],
                                                    rates["wikitext"] / one["wikitext"])))
        if ("tensor", n) in meshes:
            run.add(row(f"serve {name} {run.args.dtype}, {streams}, mesh tensor={n}", "tokens/s",
                        meshes[("tensor", n)]))
        if n == 1:
            run.add(row("serve: the sharded engine at one device against the unplaced one", "%",
                        100 * meshes[("tensor", 1)] / one["serve"]))
