"""What the loop trains, registered by name (kind "objective", config key `objective`): each
builds the model, the data and the loss, and may export something when the run ends.

    @registry.register("objective", "mine")
    def mine(config, workdir) -> Setup: ...

`lm` is language modelling (and, with a `distill.teacher`, distillation; with `data.source=chat`,
chat fine-tuning); `classify` is sequence classification (`neojax.finetune.classify`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from neojax import registry
from neojax.data.tokenizer import Tokenizer
from neojax.finetune import classify
from neojax.model.classifier import GPTNeoClassifier
from neojax.model.config import GPTNeoConfig
from neojax.train.setup import build_data, build_model


@dataclasses.dataclass
class Setup:
    model_config: GPTNeoConfig
    tokenizer: Tokenizer
    params: Any                      # initial params (host arrays), or None for a random GPT-Neo
    data: Any                        # .train (next(), get_state, set_state), .valid, .caches
    loss: Optional[Callable] = None  # loss(params, batch, rng) -> (loss, aux); None: next-token loss
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
