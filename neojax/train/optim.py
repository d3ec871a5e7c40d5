"""Optimizers and learning-rate schedules, registered by name (kind "schedule")."""
from __future__ import annotations

import jax
import optax

from neojax import registry
from neojax.tree import path_keys


@registry.register("schedule", "cosine")
def cosine(lr, total_steps, warmup_steps=0, decay_steps=0, final_lr_ratio=0.1):
    """Linear warmup, then cosine decay to final_lr_ratio * lr at decay_steps (default: the end),
    flat after: the GPT-Neo recipe (warmup 3000, cosine to 0.1x)."""
    decay_steps = decay_steps or total_steps
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 1), max(decay_steps, warmup_steps + 1),
                                              end_value=lr * final_lr_ratio)


@registry.register("schedule", "linear")
def linear(lr, total_steps, warmup_steps=0, decay_steps=0, final_lr_ratio=0.0):
    decay_steps = decay_steps or total_steps
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
         optax.linear_schedule(lr, lr * final_lr_ratio, max(decay_steps - warmup_steps, 1))], [max(warmup_steps, 1)])


@registry.register("schedule", "constant")
def constant(lr, total_steps, warmup_steps=0, decay_steps=0, final_lr_ratio=1.0):
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
                                [max(warmup_steps, 1)])


def decay_mask(params):
    """True for the weights that get weight decay: matrices and embeddings, not LayerNorm or biases."""
    def decays(path, _):
        return path_keys(path)[-1] not in ("bias", "scale")
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, total_steps: int):
    """AdamW with global-norm clipping from an `optimizer` config section. Returns (tx, schedule)."""
    schedule = registry.get("schedule", cfg.schedule)(cfg.lr, total_steps, cfg.warmup_steps, cfg.decay_steps,
                                                     cfg.final_lr_ratio)
    parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule
