"""Models built for tests and benchmarks: a speculative pair that agrees by construction."""
from __future__ import annotations

import jax
import numpy as np

from neojax.model import init_params


def draft_width(config) -> int:
    """The agreeing pair's draft width: a third of the target's (or a half, or all of it), whole heads."""
    return config.hidden_size // next(c for c in (3, 2, 1) if config.num_heads % c == 0)


def agreeing_pair(config, params, layers: int = 2, residual: float = 0.02, seed: int = 7):
    """(target params, (draft params, draft config)): a random `layers`-block draft draft_width
    wide (the target's head size, so a vocabulary head a third as large), and a target of
    `config`'s shape whose first `layers` blocks compute exactly the draft's function (see `widen`)
    and whose other blocks (from `params`) write `residual` times their output into the residual
    stream: a pair that agrees on most tokens (every token at residual 0), built rather than
    trained, with a draft step a fraction of a target step."""
    width = draft_width(config)
    draft_config = config.replace(num_layers=layers, hidden_size=width, num_heads=width // config.head_dim,
                                  attention_types=((tuple(config.attention_layers[:layers]), 1),))
    draft = jax.device_get(init_params(draft_config, jax.random.key(seed)))
    target = {**dict(params), **widen(draft, config.hidden_size // width)}
    for i in range(layers, config.num_layers):
        block = params[f"h_{i}"]
        target[f"h_{i}"] = {**block, "attn": {**block["attn"], "out_proj": jax.tree.map(
                                lambda x: x * residual, block["attn"]["out_proj"])},
                            "mlp": {**block["mlp"], "c_proj": jax.tree.map(lambda x: x * residual,
                                                                          block["mlp"]["c_proj"])}}
    return target, (draft, draft_config)


def widen(params, copies: int) -> dict:
    """The same function `copies` times as wide: the residual stream holds `copies` copies of the
    narrow one. Embeddings, norms and biases tile; every kernel tiles both ways divided by `copies`
    (a sum over the copies of the input); heads keep their size, so target head h is narrow head
    h mod heads; the final norm's output is divided by `copies`, so the tied head's logits, a sum
    over the copies, are the narrow model's. Layer norm sees the same mean and variance."""
    def tile(path, x):
        names = [p.key for p in path]
        x = np.asarray(x)
        if names[-1] == "kernel":
            return np.tile(x, (copies, copies)) / copies
        if names[0] in ("wte", "wpe"):
            return np.tile(x, (1, copies))
        return np.tile(x, copies) / (copies if names[0] == "ln_f" else 1)
    return jax.tree_util.tree_map_with_path(tile, params)
