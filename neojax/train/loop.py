"""The training loop: one plain function from a config and a workdir to a trained checkpoint.

The workdir holds everything a run produced: config.json, checkpoints/, metrics.jsonl,
TensorBoard events (tb/), the token cache (data_cache/) and any trained tokenizer.
"""
from __future__ import annotations

import logging
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from neojax import cli, paths, registry, sharding
from neojax.checkpoint.io import write_model_card
from neojax.checkpoint.manager import Checkpointer
from neojax.cli import UsageError, duration
from neojax.finetune import lora
from neojax.flops import measure_peak_flops, train_flops_per_token
from neojax.train import hooks as _hooks  # noqa: F401  (registers the evaluation hooks)
from neojax.train import objectives as _objectives  # noqa: F401  (registers the objectives)
from neojax.train.config import check_config
from neojax.train.metrics import MetricsWriter
from neojax.train.optim import make_optimizer
from neojax.train.step import init_state, make_train_step, model_params, state_specs, trainable
from neojax.train.workdir import Workdir

log = logging.getLogger("neojax.train")


class NonFiniteError(RuntimeError):
    pass


def train(config, workdir: str, adopt_config: bool = False) -> dict:
    """Train (or resume) the experiment `config` in `workdir`; returns the last metrics logged
    ("preempted": True when SIGTERM stopped it after a save). `adopt_config`: a workdir whose
    config.json is lost resumes with `config` (else that is refused)."""
    check_config(config)
    try:
        mesh = sharding.make_mesh(config.mesh)
    except ValueError as e:
        raise UsageError(f"--config.mesh={config.mesh}: {e}") from None
    rules = tuple(tuple(r) for r in config.sharding_rules) or sharding.DEFAULT_RULES
    batch_axes = dict(rules)["act_batch"] or ()
    split = int(np.prod([mesh.shape[a] for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes)]))
    if config.train.global_batch % (split * config.train.microbatches):
        raise UsageError(f"--config.train.global_batch={config.train.global_batch} must be divisible by the "
                         f"data-parallel devices ({split}, mesh {dict(mesh.shape)}) times train.microbatches="
                         f"{config.train.microbatches}; change the batch or config.mesh (e.g. --config.mesh=data=1)")
    with Workdir.open(config, workdir, adopt_config) as wd:
        return _train(config, wd, mesh, rules)


def _train(config, wd: Workdir, mesh, rules) -> dict:
    workdir = wd.path
    main_process = jax.process_index() == 0
    with cli.about("--config"):  # the data, tokenizer and checkpoints the config names
        setup = registry.get("objective", config.objective)(config, workdir)
    model_config, tokenizer, init_params, data = setup.model_config, setup.tokenizer, setup.params, setup.data
    optimizer, schedule = make_optimizer(config.optimizer, config.train.total_steps)

    adapters = lora.Lora(config.lora.rank, config.lora.alpha, tuple(config.lora.targets)) if config.lora.rank else None
    rng = jax.random.PRNGKey(config.train.seed)
    abstract = jax.eval_shape(lambda r: init_state(model_config, optimizer, r, init_params, adapters), rng)
    state_sh = sharding.shardings(mesh, state_specs(model_config, abstract, rules, mesh))
    ckpt = Checkpointer(str(paths.path(workdir) / "checkpoints"), config.checkpoint.keep, config.checkpoint.keep_period,
                        config.checkpoint.async_save)
    had_checkpoints = ckpt.latest_step() is not None
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    restored = ckpt.restore_intact(target) if had_checkpoints else None
    if restored is not None:
        start, state, data_state, _ = restored
        data.train.set_state(data_state)
        print(f"resumed from {ckpt.directory}/{start} (step {start})", flush=True)
    elif had_checkpoints:
        ckpt.close()
        raise UsageError(f"--workdir {workdir}: every checkpoint is damaged (moved to "
                         f"{paths.path(workdir) / 'damaged_checkpoints'}); start over in a new --workdir")
    else:
        init = jax.jit(lambda r: init_state(model_config, optimizer, r, init_params, adapters), out_shardings=state_sh)
        state = init(rng)
        start = 0
    wd.write_config()  # only now: a refused or failed start leaves the workdir as it was
    if main_process:
        write_model_card(str(paths.path(workdir) / "model"), model_config, tokenizer)
        print(_summary(config, state, mesh, start), flush=True)
    frozen_config = None if setup.frozen is None else setup.frozen[0]
    frozen = () if setup.frozen is None else (jax.device_put(
        setup.frozen[1], sharding.shardings(mesh, sharding.param_specs(frozen_config, rules, mesh))),)
    nonfinite = {"step": 0, "streak": 0}  # written by the step's device callback, read here without a sync

    def on_nonfinite(at, streak):
        at, streak = int(at), int(streak)
        if at > nonfinite["step"]:  # once per step, however many devices call back
            nonfinite.update(step=at, streak=streak)
            log.warning("step %d: non-finite gradients, update skipped (%d in a row)", at, streak)

    step_fn = make_train_step(model_config, optimizer, mesh, rules, config.train.microbatches, config.train.z_loss,
                              abstract_state=abstract, frozen_config=frozen_config, loss_fn=setup.loss,
                              on_nonfinite=on_nonfinite, keep_zeros=config.train.keep_zeros)
    writer = MetricsWriter(workdir, resume_step=start, enabled=main_process)
    hook_fns = [registry.get("eval", name) for name in config.eval.hooks]
    ctx = dict(config=config, model_config=model_config, tokenizer=tokenizer, data=data, workdir=workdir, mesh=mesh)

    # SIGTERM (a preemption) saves and stops. Many processes must stop at the same step (each save is
    # collective): jax's preemption sync, which catches SIGTERM itself, names the step for all.
    stop = {"sigterm": False}
    agreed = jax.process_count() > 1
    previous = None if agreed else signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    flops = _flops_per_step(config, model_config)
    total, seq_len = config.train.total_steps, config.data.seq_len
    tokens_per_step = config.train.global_batch * seq_len
    last, window_start, window_steps = {}, time.perf_counter(), 0
    run_start = time.perf_counter()
    step = start

    def fetch():
        """The next batch, already on its way to the devices (sharded), and the data state after it."""
        batch = jax.tree.map(lambda x: sharding.global_batch(x, mesh, rules), next(data.train))
        return batch, data.train.get_state()

    # The loop reads nothing back from the devices between log steps: the non-finite guard reports
    # through a callback, and the next batch is put on the devices while this step runs.
    pending = fetch() if step < total else None
    try:
        while step < total:
            batch, data_state = pending
            state, metrics = step_fn(state, batch, *frozen)
            step += 1
            window_steps += 1
            pending = fetch() if step < total else None
            log_step = step % config.train.log_every == 0 or step == total
            streak = nonfinite["streak"]
            if log_step:  # this step is read back anyway: its own count, should its callback be late
                streak = max(streak, int(state.nonfinite_streak))
            if streak >= config.train.max_nonfinite_streak:
                raise NonFiniteError(
                    f"{streak} consecutive steps had NaN/Inf gradients (step {step}); stopping. The last good "
                    f"checkpoint is {ckpt.directory}/{ckpt.latest_step()}: lower optimizer.lr, raise "
                    "optimizer.warmup_steps, or check the data")
            if log_step:
                elapsed = time.perf_counter() - window_start
                m = jax.device_get(metrics)
                tps = window_steps * tokens_per_step / elapsed
                last = {"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
                        "train/lr": float(schedule(step)), "train/tokens_per_sec": tps,
                        "train/nonfinite_total": int(state.nonfinite_total)}
                for name in sorted(set(m) - {"loss", "grad_norm", "finite", "nll"}):  # kl, accuracy, ...
                    last[f"train/{name}"] = float(m[name])
                if flops.get("peak"):
                    last["train/mfu"] = tps * flops["per_token"] / flops["peak"]
                eta = (total - step) * elapsed / window_steps
                writer.write(step, last)
                if main_process:
                    mfu = f" mfu {last['train/mfu']:.1%}" if "train/mfu" in last else ""
                    extra = "".join(f" {k[6:]} {last[k]:.4f}" for k in ("train/kl", "train/accuracy") if k in last)
                    print(f"step {step}/{total} loss {last['train/loss']:.4f}{extra} lr {last['train/lr']:.2e} "
                          f"grad_norm {last['train/grad_norm']:.3f} {tps:,.0f} tok/s{mfu} "
                          f"eta {duration(eta)}", flush=True)
                window_start, window_steps = time.perf_counter(), 0
                ckpt.check()  # a background save that failed is reported now, not a save later
            if config.eval.every_steps and (step % config.eval.every_steps == 0 or step == total):
                params = model_params(state.params)  # LoRA adapters merged in; otherwise the params as they are
                for hook in hook_fns:
                    writer.write(step, hook(params, step=step, **ctx))
                window_start = time.perf_counter()  # tokens/s measures training only
            if agreed and multihost_utils.reached_preemption_sync_point(step):
                stop["sigterm"] = True
            if step % config.checkpoint.every_steps == 0 or step == total or stop["sigterm"]:
                ckpt.save(step, state, data_state, {"step": step, "config": config.to_dict()})
                window_start = time.perf_counter()
            if stop["sigterm"]:
                if main_process:
                    print(f"SIGTERM: saved step {step} to {ckpt.directory}; re-run the same command to resume",
                          flush=True)
                last["preempted"] = True
                break
        if adapters is not None and main_process:
            lora.save_adapters(str(paths.path(workdir) / "adapters"), jax.device_get(state.params), adapters,
                               overwrite=True)
        if setup.finish is not None and step == total and not stop["sigterm"] and main_process:
            setup.finish(workdir, jax.device_get(model_params(state.params)))
    finally:
        ckpt.close()
        writer.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    last["wall_time_s"] = time.perf_counter() - run_start
    return {"step": step, "state": state, **last}


def _flops_per_step(config, model_config) -> dict:
    out = {"per_token": train_flops_per_token(model_config, config.data.seq_len)}
    if config.train.report_mfu:
        out["peak"] = measure_peak_flops(seconds=0.5) * jax.device_count() / jax.local_device_count()
    return out


def _summary(config, state, mesh, start: int) -> str:
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    trained = count(trainable(state.params))
    axes = ",".join(f"{k}={v}" for k, v in mesh.shape.items())
    t = config.train
    return (f"model {count(state.params) / 1e6:,.2f}M parameters ({trained / 1e6:,.2f}M trained) | mesh {axes} on "
            f"{jax.device_count()} {jax.default_backend()} device(s) | {t.global_batch * config.data.seq_len:,} tokens "
            f"a step (batch {t.global_batch} x {config.data.seq_len}) | step {start} of {t.total_steps}")
