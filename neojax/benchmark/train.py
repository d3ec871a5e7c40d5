"""Training rows: tokens/s and MFU at T=2048 beside transformers, a step's compiled peak memory,
and a local-only stack's forward time against T (linear)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from neojax.benchmark.common import best, on_accelerator, row, torch_model
from neojax.flops import full_causal_train_flops_per_token, train_flops_per_token
from neojax.model import GPTNeo, init_params
from neojax.train.step import init_state, make_train_step


def train_setup(config, params, seq_len, batch):

    tx = optax.adamw(1e-4)
    state = init_state(config, tx, jax.random.PRNGKey(0), jax.tree.map(jnp.copy, params))  # the step donates it
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq_len + 1)), jnp.int32)
    return make_train_step(config, tx), state, tokens


def bench_train(config, params, seq_len=2048, batch=1, torch_too=True):
    step, state, tokens = train_setup(config, params, seq_len, batch)
    holder = {"state": state}
    steps = 5 if on_accelerator() else 1

    def run():
        for _ in range(steps):
            holder["state"], m = step(holder["state"], tokens)
        jax.block_until_ready(m["loss"])
    seconds = best(run, repeats=2) / steps
    ours = batch * seq_len / seconds
    theirs = None
    if torch_too:
        import torch  # deferred: the reference is optional (requirements-test.txt)
        model = torch_model(config, params).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t = torch.tensor(np.asarray(tokens), dtype=torch.long)

        def torch_step():
            opt.zero_grad()
            model(input_ids=t[:, :-1], labels=t[:, :-1]).loss.backward()
            opt.step()
        theirs = batch * seq_len / best(torch_step, repeats=1)
    return ours, theirs


def bench_memory(config, params, seq_len=2048, batch=1):
    """Compiled peak bytes of one training step (XLA's buffer assignment; nothing is run)."""
    step, state, tokens = train_setup(config, params, seq_len, batch)
    stats = step.lower(state, tokens).compile().memory_analysis()
    if on_accelerator() and getattr(stats, "peak_memory_in_bytes", 0):
        return stats.peak_memory_in_bytes
    # XLA:CPU's peak_memory_in_bytes leaves out the temporaries: add up the buffers instead.
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes)


def bench_local_scaling(config, lengths=(512, 1024, 2048, 4096), batch=1):
    """Forward seconds of a stack of local layers only, positions extended to the longest T."""
    local = config.replace(attention_types=[[["local"], config.num_layers]], max_position_embeddings=max(lengths))
    params = init_params(local, jax.random.key(1))
    forward = jax.jit(lambda p, t: GPTNeo(local).apply({"params": p}, t))
    out = {}
    for t in lengths:
        tokens = jnp.zeros((batch, t), jnp.int32)
        out[t] = best(lambda: forward(params, tokens).block_until_ready(), repeats=3)
    return out


def rows(run) -> None:
    args = run.args
    t, b = args.seq_len, args.train_batch
    for name in run.presets:
        cfg = run.shapes[name].replace(dtype=args.dtype, remat=args.remat)
        p = run.params if name == run.name else init_params(cfg, jax.random.key(0))
        ours, theirs = bench_train(cfg, p, t, b, torch_too=run.torch_too and name == run.name)
        label = f"train {name} T={t} batch {b} {args.dtype} remat={args.remat}"
        run.add(row(label, "tokens/s", ours, theirs))
        run.add(row(f"{label} MFU (6N + attention FLOPs / measured peak)", "%",
                    100 * ours * train_flops_per_token(cfg, t) / run.peak))
        run.add(row(f"{label} MFU, every layer's attention counted causal over T (local windows not credited) / "
                    "measured peak", "%", 100 * ours * full_causal_train_flops_per_token(cfg, t) / run.peak))
        if run.datasheet and args.dtype == "bfloat16":
            run.add(row(f"{label} MFU (6N + attention FLOPs / the datasheet's {run.datasheet / 1e12:.0f} TFLOP/s)",
                        "%", 100 * ours * train_flops_per_token(cfg, t) / run.datasheet))
        del p


def memory_rows(run) -> None:
    t, b = run.args.seq_len, run.args.train_batch
    for remat in ("none", "dots", "full"):
        peak_bytes = bench_memory(run.config.replace(remat=remat), run.params, t, b)
        run.add(row(f"train step peak memory {run.name} T={t} batch {b} remat={remat}", "MB", peak_bytes / 1e6))


def local_rows(run) -> None:
    times = bench_local_scaling(run.config)
    for length, seconds in times.items():
        run.add(row(f"local-only {run.name} forward T={length} (per token vs T=512: "
                    f"{seconds / length / (times[512] / 512):.2f}x)", "ms", 1e3 * seconds))
