"""What the loop trains, registered by name (kind "objective", config key `objective`): each
builds the model, the data and the loss, and may export something when the run ends.

    @registry.register("objective", "mine")
    def mine(config, workdir) -> Setup: ...

`lm` is language modelling (with `data.source=chat`, chat fine-tuning); `distill` is language
modelling plus the KL to a teacher's predictions (`distill.*`, its loss here: `distill_loss`);
`classify` is sequence classification (`neojax.finetune.classify`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from neojax import registry
from neojax.data.tokenizer import Tokenizer
from neojax.errors import UsageError
from neojax.finetune import classify
from neojax.model.classifier import GPTNeoClassifier
from neojax.model.config import GPTNeoConfig
from neojax.train.setup import build_data, build_model, load_float
from neojax.train.step import Predictions, lm_loss, logits, predict, z_penalty


@dataclasses.dataclass
class Setup:
    model_config: GPTNeoConfig
    tokenizer: Tokenizer
    params: Any                      # initial params (host arrays), or None for a random GPT-Neo
    data: Any                        # .train (next(), get_state, set_state), .valid, .caches
    loss: Optional[Callable] = None  # loss(params, batch, rng, *frozen params) -> (loss, aux); None: next-token
    frozen: Optional[tuple] = None   # (GPTNeoConfig, params): a frozen model the loss reads, e.g. a teacher
    finish: Optional[Callable] = None  # finish(workdir, params) once the last step is done


@registry.register("objective", "lm")
def language_model(config, workdir: str) -> Setup:
    model_config, tokenizer, params = build_model(config, workdir)
    return Setup(model_config, tokenizer, params, build_data(config, tokenizer, workdir, model_config))


@registry.register("objective", "classify")
def classification(config, workdir: str) -> Setup:
    model_config, tokenizer, params, data = classify.build(config)
    model = GPTNeoClassifier(model_config, len(data.names))
    batch = config.train.global_batch
    return Setup(model_config, tokenizer, params, data, loss=classify.classifier_loss(model),
                 finish=lambda workdir, params: classify.export(workdir, model, params, tokenizer, data, batch))


def distill_loss(pred: Predictions, teacher_logits, temperature: float, alpha: float, z_loss: float = 0.0):
    """Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531): (1 - alpha) x next-token
    loss + alpha x T^2 x KL(teacher || student), both softened by temperature T, per target token
    (+ z_loss x z_penalty). Returns (loss, aux with "kl")."""
    _, aux = lm_loss(pred)
    teacher_logp = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
    student_logp = jax.nn.log_softmax(pred.logits / temperature, axis=-1)
    aux["kl"] = pred.mean(jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1))
    loss = (1 - alpha) * aux["nll"] + alpha * temperature ** 2 * aux["kl"]
    return (loss + z_loss * z_penalty(pred) if z_loss else loss), aux


@registry.register("objective", "distill")
def distillation(config, workdir: str) -> Setup:
    """Knowledge distillation from the checkpoint `distill.teacher` (same tokenizer): the teacher's
    params are a frozen argument of the step, sharded by the same rules as the student's."""
    d = config.distill
    model_config, tokenizer, params = build_model(config, workdir)
    teacher = load_float(d.teacher, "distill.teacher", dtype=model_config.dtype)
    if teacher.config.vocab_size != model_config.vocab_size:
        raise UsageError(f"distill.teacher {d.teacher} has a {teacher.config.vocab_size}-token vocabulary, the "
                         f"student {model_config.vocab_size}: distillation needs one tokenizer "
                         f"(set data.tokenizer={d.teacher})")
    data = build_data(config, tokenizer, workdir, model_config)  # only now: a refused teacher writes no cache

    def loss(params, batch, rng, teacher_params):
        pred = predict(params, model_config, batch, rng)
        return distill_loss(pred, logits(teacher_params, teacher.config, pred.inputs, None, pred.segments),
                            d.temperature, d.alpha, config.train.z_loss)
    return Setup(model_config, tokenizer, params, data, loss=loss, frozen=(teacher.config, teacher.params))
