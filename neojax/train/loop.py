"""The training loop: one plain function from a config and a workdir to a trained checkpoint.

The workdir holds everything a run produced: config.json, checkpoints/, metrics.jsonl,
TensorBoard events (tb/), the token cache (data_cache/) and any trained tokenizer.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Optional

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
from neojax.train.monitor import Monitor
from neojax.train.optim import make_optimizer
from neojax.train.schema import ConfigError
from neojax.train.step import init_state, make_train_step, model_params, state_specs, trainable
from neojax.train.timing import Clock
from neojax.train.workdir import Workdir

log = logging.getLogger("neojax.train")


class NonFiniteError(RuntimeError):
    pass


def train(config, workdir: str, adopt_config: bool = False, started: Optional[float] = None) -> dict:
    """Train (or resume) the experiment `config` in `workdir`; returns the last metrics logged
    ("preempted": True when SIGTERM stopped it after a save). `adopt_config`: a workdir whose
    config.json is lost resumes with `config` (else that is refused). `started`: time.time() the
    command began (start-up time counts from it; default: now)."""
    clock = Clock(time.time() if started is None else started)
    check_config(config)
    try:
        mesh = sharding.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError([("mesh", config.mesh, str(e))]) from None
    rules = tuple(tuple(r) for r in config.sharding_rules) or sharding.DEFAULT_RULES
    batch_axes = dict(rules)["act_batch"] or ()
    split = int(np.prod([mesh.shape[a] for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes)]))
    if config.train.global_batch % (split * config.train.microbatches):
        raise ConfigError([("train.global_batch", config.train.global_batch, f"must be divisible by the data-parallel "
                            f"devices ({split}, mesh {dict(mesh.shape)}) times train.microbatches="
                            f"{config.train.microbatches}; change the batch or the mesh (e.g. mesh=data=1)")])
    with Workdir.open(config, workdir, adopt_config) as wd:
        return _train(config, wd, mesh, rules, clock)


def _train(config, wd: Workdir, mesh, rules, clock: Clock) -> dict:
    workdir, main_process = wd.path, jax.process_index() == 0
    with cli.about("--config"):  # the data, tokenizer and checkpoints the config names
        setup = registry.get("objective", config.objective)(config, workdir)
    model_config, data = setup.model_config, setup.data
    flops = _flops(config, model_config)  # the peak is measured before the state fills the devices' memory
    optimizer, schedule = make_optimizer(config.optimizer, config.train.total_steps)
    adapters = lora.Lora(config.lora.rank, config.lora.alpha, tuple(config.lora.targets)) if config.lora.rank else None
    init = lambda r: init_state(model_config, optimizer, r, setup.params, adapters)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(config.train.seed))
    state_sh = sharding.shardings(mesh, state_specs(model_config, abstract, rules, mesh))
    c = config.checkpoint
    ckpt = Checkpointer(str(paths.path(workdir) / "checkpoints"), c.keep, c.keep_period, c.async_save)
    start, state = _restore_or_init(ckpt, jax.jit(init, out_shardings=state_sh), abstract, state_sh, data, config)
    wd.write_config()  # only now: a refused or failed start leaves the workdir as it was
    if main_process:
        write_model_card(str(paths.path(workdir) / "model"), model_config, setup.tokenizer)
        print(_summary(config, state, mesh, start, model_config, flops), flush=True)
    guard = NonFiniteGuard(config.train.max_nonfinite_streak)
    step_fn, frozen = _step_function(config, setup, optimizer, mesh, rules, abstract)
    writer = MetricsWriter(workdir, resume_step=start, enabled=main_process)
    hook_fns = [registry.get("eval", name) for name in config.eval.hooks]
    ctx = dict(config=config, model_config=model_config, tokenizer=setup.tokenizer, data=data, workdir=workdir,
               mesh=mesh)
    meter = Meter(config, schedule, start, flops)
    total, step, last = config.train.total_steps, start, {}

    def fetch():
        """The next batch, already on its way to the devices (sharded), and the data state after it."""
        with clock.timing("data"):
            batch = jax.tree.map(lambda x: sharding.global_batch(x, mesh, rules), next(data.train))
            return batch, data.train.get_state()

    # The loop reads nothing back from the devices between log steps (the non-finite guard reads the
    # skip counters there), and the next batch is put on the devices while this step runs.
    pending = fetch() if step < total else None
    with Preemption() as preemption, Monitor(config, workdir, start, clock, main_process) as monitor:
        try:
            while step < total:
                batch, data_state = pending
                monitor.before(step + 1)
                state, metrics = step_fn(state, batch, *frozen)
                step += 1
                pending = fetch() if step < total else None
                monitor.dispatched(step, state, metrics)
                log_step = due(step, config.train.log_every, total)
                if log_step:
                    guard.check(step, state, ckpt)
                    steps = step - meter.window_step
                    last = {**meter.log(step, jax.device_get(metrics), state), **monitor.logged(step, steps)}
                    writer.write(step, last)
                    if main_process:
                        print(meter.line(step, last), flush=True)
                    ckpt.check()  # a background save that failed is reported now, not a save later
                if due(step, config.eval.every_steps, total):
                    params = model_params(state.params)  # LoRA adapters merged in; otherwise the params as they are
                    with meter.paused(), clock.timing("hooks"):
                        for hook in hook_fns:
                            writer.write(step, hook(params, step=step, **ctx))
                stopping = preemption.requested(step)
                if due(step, config.checkpoint.every_steps, total) or stopping:
                    with meter.paused(), clock.timing("checkpoint"):
                        ckpt.save(step, state, data_state, {"step": step, "config": config.to_dict()})
                if stopping:
                    if main_process:
                        print(f"SIGTERM: saved step {step} to {ckpt.directory}; re-run the same command to resume",
                              flush=True)
                    last["preempted"] = True
                    break
            if main_process:
                _export(setup, adapters, state, workdir, finished=step == total and not last.get("preempted"))
        finally:
            with clock.timing("checkpoint"):
                ckpt.close()  # waits for a save in flight
            writer.close()
            monitor.ended(step, "preempted" if last.get("preempted") else "finished" if step == total else "failed")
    last["wall_time_s"] = meter.wall_time()
    return {"step": step, "state": state, **last}


def _step_function(config, setup, optimizer, mesh, rules, abstract) -> tuple:
    """(the jitted train step, the frozen params it takes: a teacher's, placed by the rules, or none)."""
    frozen_config = None if setup.frozen is None else setup.frozen[0]
    frozen = () if setup.frozen is None else (jax.device_put(
        setup.frozen[1], sharding.shardings(mesh, sharding.param_specs(frozen_config, rules, mesh))),)
    step_fn = make_train_step(setup.model_config, optimizer, mesh, rules, config.train.microbatches,
                              config.train.z_loss, abstract_state=abstract, frozen_config=frozen_config,
                              loss_fn=setup.loss, keep_zeros=config.train.keep_zeros)
    return step_fn, frozen


def due(step: int, every: int, total: int) -> bool:
    """Whether something done every `every` steps (0: never) is due after `step`: on its multiples
    and at the last step."""
    return bool(every) and (step % every == 0 or step == total)


def _restore_or_init(ckpt: Checkpointer, init, abstract, state_sh, data, config) -> tuple[int, object]:
    """(step, state): the newest intact checkpoint's (the data iterator set to its position), or a
    fresh state at step 0. A workdir whose checkpoints are all damaged is refused."""
    if ckpt.latest_step() is None:
        return 0, init(jax.random.PRNGKey(config.train.seed))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    restored = ckpt.restore_intact(target)
    if restored is None:
        ckpt.close()
        workdir = paths.path(ckpt.directory).parent
        raise UsageError(f"--workdir {workdir}: every checkpoint is damaged (moved to "
                         f"{workdir / 'damaged_checkpoints'}); start over in a new --workdir")
    start, state, data_state, _ = restored
    data.train.set_state(data_state)
    if sharding.is_lead_process():  # every process restores; process 0 says so
        print(f"resumed from {ckpt.directory}/{start} (step {start})", flush=True)
    return start, state


def _export(setup, adapters, state, workdir: str, finished: bool) -> None:
    """What a run leaves besides checkpoints: its LoRA adapters, and the objective's export once the
    last step is done (a classifier's report, ...)."""
    if adapters is not None:
        lora.save_adapters(str(paths.path(workdir) / "adapters"), jax.device_get(state.params), adapters,
                           overwrite=True)
    if setup.finish is not None and finished:
        setup.finish(workdir, jax.device_get(model_params(state.params)))


class NonFiniteGuard:
    """Ends the run once `limit` consecutive steps had NaN/Inf gradients (each one skipped by the
    step), seen at a log step: the step counts skips on the device and has no host callback, so
    jax's persistent compilation cache can keep it (a restart loads the step instead of compiling it)."""

    def __init__(self, limit: int):
        self.limit, self.step, self.total = limit, 0, 0

    def check(self, step: int, state, ckpt: Checkpointer) -> None:
        """At a log step (`state` read back there anyway): warn of the steps skipped since the last
        one, and raise NonFiniteError once the streak reaches the limit."""
        streak, total = int(state.nonfinite_streak), int(state.nonfinite_total)
        if total > self.total:
            log.warning("steps %d-%d: %d update(s) skipped for non-finite gradients (%d in a row now)",
                        self.step + 1, step, total - self.total, streak)
        self.step, self.total = step, total
        if streak >= self.limit:
            raise NonFiniteError(
                f"{streak} consecutive steps had NaN/Inf gradients (step {step}); stopping. The last good "
                f"checkpoint is {ckpt.directory}/{ckpt.latest_step()}: lower optimizer.lr, raise "
                "optimizer.warmup_steps, or check the data")


class Preemption:
    """SIGTERM (a preemption) saves and stops. Many processes must stop at the same step (each save
    is collective): there jax's preemption sync, which catches SIGTERM itself, names the step."""

    def __enter__(self):
        self.sigterm, self.agreed = False, jax.process_count() > 1
        self.previous = None if self.agreed else signal.signal(signal.SIGTERM, self._caught)
        return self

    def _caught(self, *_):
        self.sigterm = True

    def requested(self, step: int) -> bool:
        if self.agreed and multihost_utils.reached_preemption_sync_point(step):
            self.sigterm = True
        return self.sigterm

    def __exit__(self, *_):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class Meter:
    """Training speed between log steps (time in hooks and saves excluded), ETA and the log line."""

    def __init__(self, config, schedule, start: int, flops: dict):
        self.total, self.schedule, self.flops = config.train.total_steps, schedule, flops
        self.tokens_per_step = config.train.global_batch * config.data.seq_len
        self.started = self.window_start = time.perf_counter()
        self.window_step, self.excluded, self.eta = start, 0.0, 0.0

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (a hook, a save) is not training time."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - began

    def log(self, step: int, m: dict, state) -> dict:
        """The metrics of a log step: the step's own (read back) and the speed since the last log step."""
        elapsed = time.perf_counter() - self.window_start - self.excluded
        steps = step - self.window_step
        tps = steps * self.tokens_per_step / elapsed
        last = {"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
                "train/lr": float(self.schedule(step)), "train/tokens_per_sec": tps,
                "train/nonfinite_total": int(state.nonfinite_total)}
        for name in sorted(set(m) - {"loss", "grad_norm", "finite", "nll"}):  # kl, accuracy, ...
            last[f"train/{name}"] = float(m[name])
        if self.flops.get("peak"):
            last["train/mfu"] = tps * self.flops["per_token"] / self.flops["peak"]
        self.eta = (self.total - step) * elapsed / steps
        self.window_step, self.window_start, self.excluded = step, time.perf_counter(), 0.0
        return last

    def line(self, step: int, last: dict) -> str:
        mfu = f" mfu {last['train/mfu']:.1%}" if "train/mfu" in last else ""
        extra = "".join(f" {k[6:]} {last[k]:.4f}" for k in ("train/kl", "train/accuracy") if k in last)
        return (f"step {step}/{self.total} loss {last['train/loss']:.4f}{extra} lr {last['train/lr']:.2e} "
                f"grad_norm {last['train/grad_norm']:.3f} {last['train/tokens_per_sec']:,.0f} tok/s{mfu} "
                f"eta {duration(self.eta)}")

    def wall_time(self) -> float:
        return time.perf_counter() - self.started


def _flops(config, model_config) -> dict:
    """The model's training FLOPs a token and, with train.report_mfu, the devices' measured matmul peak."""
    out = {"per_token": train_flops_per_token(model_config, config.data.seq_len)}
    if config.train.report_mfu:  # in the compute dtype, at a size that fills the device (a CPU is full at 1024^3)
        size = 1024 if jax.default_backend() == "cpu" else 8192
        peak = measure_peak_flops(jax.numpy.dtype(model_config.dtype), size=size, seconds=0.2)
        out["peak"] = peak * jax.device_count() / jax.local_device_count()
    return out


def _summary(config, state, mesh, start: int, model_config, flops: dict) -> str:
    """The run's first line (model, mesh, tokens a step, where it starts) and, with MFU on, what MFU divides by."""
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    trained = count(trainable(state.params))
    axes = ",".join(f"{k}={v}" for k, v in mesh.shape.items())
    t = config.train
    text = (f"model {count(state.params) / 1e6:,.2f}M parameters ({trained / 1e6:,.2f}M trained) | mesh {axes} on "
            f"{jax.device_count()} {jax.default_backend()} device(s) | {t.global_batch * config.data.seq_len:,} tokens "
            f"a step (batch {t.global_batch} x {config.data.seq_len}) | step {start} of {t.total_steps}")
    if "peak" in flops:
        peak = f"{flops['peak'] / 1e12:,.3f} TFLOP/s" if flops["peak"] >= 1e12 else f"{flops['peak'] / 1e9:.1f} GFLOP/s"
        text += (f"\nmfu against {peak}: the {model_config.dtype} matmul peak measured here, for "
                 f"{jax.device_count()} device(s); {flops['per_token']:,.0f} FLOPs a token")
    return text
