"""The train step: next-token loss, gradient accumulation, non-finite guard, sharded jit with donation.

    step_fn = make_train_step(config, optimizer, mesh, rules, microbatches=4)
    state, metrics = step_fn(state, tokens)        # tokens: [global_batch, seq_len + 1]
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from neojax import sharding
from neojax.model import lora
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo, init_params
from neojax.model.sparsity import prunable


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_streak: jax.Array  # consecutive steps skipped for NaN/Inf gradients
    # `step` counts batches consumed (skipped ones too), so it always matches the data iterator.
    nonfinite_total: jax.Array


def trainable(params):
    """The part of the params the optimizer updates: LoRA adapters when attached, else everything."""
    return params["lora"] if lora.is_lora(params) else params


def with_trainable(params, new):
    return {**params, "lora": new} if lora.is_lora(params) else new


def model_params(params):
    """Plain GPT-Neo params for the forward pass (LoRA adapters merged in)."""
    return lora.merge(params) if lora.is_lora(params) else params


def init_state(config: GPTNeoConfig, optimizer, rng, params=None, adapters: lora.Lora | None = None) -> TrainState:
    """A fresh state (params from `rng` unless given; LoRA adapters attached when `adapters` is
    set). Call through `sharded_init` on a mesh."""
    init_rng, rng = jax.random.split(rng)
    params = init_params(config, init_rng) if params is None else params
    if adapters is not None:
        params = adapters.attach(params, jax.random.fold_in(init_rng, 1))
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the step donates each one
    return TrainState(step=zero(), params=params, opt_state=optimizer.init(trainable(params)), rng=rng,
                      nonfinite_streak=zero(), nonfinite_total=zero())


def state_specs(config: GPTNeoConfig, abstract_state, rules=sharding.DEFAULT_RULES, mesh=None):
    return sharding.state_specs(abstract_state, sharding.param_specs(config, rules, mesh))


class Predictions(NamedTuple):
    """A forward pass over a batch: float32 logits of its inputs and which next-token targets count."""
    logits: jax.Array    # [batch, T, vocab]
    targets: jax.Array   # [batch, T]
    weights: jax.Array   # [batch, T] float32: 1 where a target counts
    inputs: jax.Array    # [batch, T] (so another model, a teacher, can read the same inputs)
    segments: Any        # [batch, T] segment ids of the inputs (packed examples), or None

    def mean(self, per_token):
        """The mean of a [batch, T] quantity over the targets that count."""
        return (per_token * self.weights).sum() / jnp.maximum(self.weights.sum(), 1.0)


def logits(params, config: GPTNeoConfig, inputs, rng=None, segment_ids=None):
    """Float32 logits; dropout on when `rng` is given (training)."""
    rngs = None if rng is None else {"dropout": rng}
    return GPTNeo(config).apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs,
                                segment_ids=segment_ids)


def predict(params, config: GPTNeoConfig, batch, rng=None) -> Predictions:
    """The model over a batch: a [batch, T+1] token array, or a dict with "tokens" and optionally
    "loss_mask" (which tokens count as targets, e.g. chat responses only) and "segment_ids"
    (packed examples, 0 = padding: never predicted across a boundary)."""
    if not isinstance(batch, dict):
        batch = {"tokens": batch}
    tokens, loss_mask, segment_ids = batch["tokens"], batch.get("loss_mask"), batch.get("segment_ids")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    segments = None if segment_ids is None else segment_ids[:, :-1]
    weights = jnp.ones(targets.shape, jnp.float32) if loss_mask is None else loss_mask[:, 1:].astype(jnp.float32)
    if segment_ids is not None:
        weights = weights * ((segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0))
    return Predictions(logits(params, config, inputs, rng, segments), targets, weights, inputs, segments)


def next_token_nll(pred: Predictions):
    """Per target: the cross entropy of the next token ([batch, T])."""
    logz = jax.nn.logsumexp(pred.logits, axis=-1)
    return logz - jnp.take_along_axis(pred.logits, pred.targets[..., None], axis=-1)[..., 0]


def z_penalty(pred: Predictions):
    """PaLM's auxiliary z-loss term: the mean squared log-partition function."""
    return pred.mean(jax.nn.logsumexp(pred.logits, axis=-1) ** 2)


def lm_loss(pred: Predictions, z_loss: float = 0.0):
    """Mean next-token cross entropy over the targets that count, plus z_loss x z_penalty.
    Returns (loss, aux)."""
    nll = pred.mean(next_token_nll(pred))
    aux = {"nll": nll, "tokens": pred.weights.sum()}
    return (nll + z_loss * z_penalty(pred) if z_loss else nll), aux


def batch_loss(params, config: GPTNeoConfig, batch, z_loss: float = 0.0, rng=None):
    """lm_loss of the model over a batch (see predict for the batch's forms)."""
    return lm_loss(predict(params, config, batch, rng), z_loss)


def zeros_kept(new, old):
    """new, with every prunable kernel weight that is zero in old set back to zero."""
    old_flat = flax.traverse_util.flatten_dict(old)
    return flax.traverse_util.unflatten_dict({
        p: jnp.where(old_flat[p] == 0, 0, w) if prunable(p) else w
        for p, w in flax.traverse_util.flatten_dict(new).items()})


def accumulated(one, tokens, rng, microbatches: int):
    """The mean of `one(slice, rng)` (a pytree: loss, metrics, gradients) over `microbatches` equal
    slices of the batch, each with its own key, in one loop: a larger-than-memory global batch."""
    rows = jax.tree.leaves(tokens)[0].shape[0]
    if rows % microbatches:
        raise ValueError(f"batch {rows} is not divisible by microbatches={microbatches}")
    chunks = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), tokens)
    first = jax.tree.map(lambda x: x[0], chunks)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: one(first, rng)))

    def body(acc, xs):
        return jax.tree.map(jnp.add, acc, one(*xs)), None

    total, _ = jax.lax.scan(body, zeros, (chunks, jax.random.split(rng, microbatches)))
    return jax.tree.map(lambda x: x / microbatches, total)


def make_train_step(config: GPTNeoConfig, optimizer: optax.GradientTransformation, mesh=None,
                    rules=sharding.DEFAULT_RULES, microbatches: int = 1, z_loss: float = 0.0,
                    abstract_state=None, frozen_config: GPTNeoConfig | None = None, loss_fn=None,
                    keep_zeros: bool = False):
    """A jitted `step(state, tokens) -> (state, metrics)` that donates `state`; with `frozen_config`,
    `step(state, tokens, frozen_params)` passes a frozen model's params (e.g. a teacher) to `loss_fn`.

    With a mesh, the state's shardings come from the rules and the batch is split over the
    data-parallel axes; activations get the model's logical constraints. `microbatches` > 1
    accumulates gradients over equal slices of the batch (a larger-than-memory global batch).
    `loss_fn(params, batch, rng, *frozen) -> (loss, aux)` replaces the next-token loss (another objective).
    `keep_zeros`: the blocks' kernel weights that are exactly zero stay zero (a pruned model's masks,
    kept without storing them). A step whose gradients are not finite changes nothing but the skip
    counters (`nonfinite_streak`, `nonfinite_total`), which the loop reads at log steps: no host
    callback, so the compiled step can be kept in jax's persistent compilation cache."""
    train = config.embed_dropout > 0 or config.attention_dropout > 0 or config.resid_dropout > 0

    def grads_of(params, tokens, rng, frozen):
        """Loss, aux metrics and gradients with respect to the trainable part of the params only."""
        def one(tokens_mb, rng_mb):
            def loss_of(t):
                merged, rng_ = model_params(with_trainable(params, t)), rng_mb if train else None
                if loss_fn is not None:
                    return loss_fn(merged, tokens_mb, rng_, *frozen)
                return batch_loss(merged, config, tokens_mb, z_loss, rng_)
            (value, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable(params))
            aux.pop("tokens", None)
            return value, aux, grads

        return one(tokens, rng) if microbatches == 1 else accumulated(one, tokens, rng, microbatches)

    def step(state: TrainState, tokens, *frozen):
        rng, step_rng = jax.random.split(state.rng)
        ctx = nn.logical_axis_rules(rules) if mesh is not None else contextlib.nullcontext()
        with ctx:
            loss, aux, grads = grads_of(state.params, tokens, step_rng, frozen)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable(state.params))
        params = with_trainable(state.params, optax.apply_updates(trainable(state.params), updates))
        if keep_zeros:
            params = zeros_kept(params, state.params)
        # Select, never multiply: 0 * NaN is NaN.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1, params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state), rng=rng,
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
        metrics = {"loss": loss, **aux, "grad_norm": grad_norm, "finite": finite}
        return new_state, metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    if abstract_state is None:
        raise ValueError("make_train_step with a mesh needs abstract_state (jax.eval_shape of the state)")
    state_sh = sharding.shardings(mesh, state_specs(config, abstract_state, rules, mesh))
    batch_sh = jax.sharding.NamedSharding(mesh, sharding.batch_spec(rules))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    frozen_sh = () if frozen_config is None else (
        sharding.shardings(mesh, sharding.param_specs(frozen_config, rules, mesh)),)
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh) + frozen_sh, out_shardings=(state_sh, replicated),
                     donate_argnums=0)

    def run(state, tokens, *frozen):
        with jax.set_mesh(mesh):
            return jitted(state, tokens, *frozen)
    run.jitted = jitted
    return run


def sharded_init(config: GPTNeoConfig, optimizer, mesh, rng, rules=sharding.DEFAULT_RULES, params=None,
                 adapters: lora.Lora | None = None):
    """The train state born sharded: params and optimizer moments are created in their shards."""
    init = lambda r: init_state(config, optimizer, r, params, adapters)
    specs_fn = lambda abstract: state_specs(config, abstract, rules, mesh)
    return sharding.init_sharded(init, mesh, specs_fn, rng)
