"""GPT-Neo for sequence classification: a linear head on the last non-padding token, as
transformers' GPTNeoForSequenceClassification (whose checkpoints load and save, see
`neojax.checkpoint.hf`).

    model = GPTNeoClassifier(config, num_labels=2)
    logits = model.apply({"params": params}, tokens, attention_mask=mask)   # [batch, num_labels]
    params = {"transformer": <GPT-Neo params>, "score": {"kernel": [hidden, num_labels]}}
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo


def last_token_index(attention_mask, length: int):
    """The rightmost position whose mask is 1 (works for left and right padding); T-1 without a mask."""
    if attention_mask is None:
        return jnp.full((1,), length - 1, jnp.int32)
    return jnp.argmax(jnp.arange(length) * (attention_mask > 0), axis=-1).astype(jnp.int32)


class GPTNeoClassifier(nn.Module):
    config: GPTNeoConfig
    num_labels: int

    @nn.compact
    def __call__(self, tokens, attention_mask=None, position_ids=None, deterministic: bool = True):
        hidden = GPTNeo(self.config, name="transformer").hidden(tokens, attention_mask, position_ids, deterministic)
        last = last_token_index(attention_mask, tokens.shape[1])
        pooled = jnp.take_along_axis(hidden, jnp.broadcast_to(last, (tokens.shape[0],))[:, None, None], axis=1)[:, 0]
        score = nn.Dense(self.num_labels, use_bias=False, name="score", dtype=jnp.float32, param_dtype=jnp.float32,
                         kernel_init=nn.with_logical_partitioning(
                             nn.initializers.normal(self.config.initializer_range), ("embed", "labels")))
        return score(pooled.astype(jnp.float32))


def init_classifier(config: GPTNeoConfig, num_labels: int, rng, transformer_params=None):
    """Params of a classifier: a fresh score head on `transformer_params` (a pretrained GPT-Neo) or
    on a random GPT-Neo."""
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = jax.jit(lambda r: nn.meta.unbox(GPTNeoClassifier(config, num_labels).init(r, tokens)["params"]))(rng)
    if transformer_params is not None:
        params = {**params, "transformer": transformer_params}
    return params
