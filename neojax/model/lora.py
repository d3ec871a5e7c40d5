"""LoRA: low-rank adapters on chosen weight matrices (Hu et al. 2021, arXiv:2106.09685).

A selected kernel W [in, out] is used as W + scale * A @ B with A [in, r] (random), B [r, out]
(zeros, so training starts from the base model) and scale = alpha / r. Targets are regular
expressions over parameter paths, like partition rules:

    lora = Lora(rank=8, alpha=16, targets=(r"attn/(q|v)_proj/kernel",))
    params = lora.attach(base_params, rng)      # {"base": ..., "lora": ..., "lora_scale": ...}
    model_params = lora.merge(params)           # plain GPT-Neo params: forward, export

During training only params["lora"] is differentiated and given to the optimizer (see
`neojax.train.step`): the base stays bit-identical and has no optimizer state. Saving and loading
the adapters alone: `neojax.finetune.lora`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neojax.tree import named_leaves, path_name

DEFAULT_TARGETS = (r"attn/(q|v)_proj/kernel",)  # the kernels LoRA adapts unless told: queries and values


@dataclasses.dataclass(frozen=True)
class Lora:
    rank: int = 8
    alpha: float = 16.0
    targets: Sequence[str] = DEFAULT_TARGETS

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        object.__setattr__(self, "targets", tuple(self.targets))

    def paths(self, params) -> list[str]:
        """Paths of the 2-D kernels the targets select; none selected is an error listing candidates."""
        leaves = named_leaves(params)
        chosen = [name for name, x in leaves.items()
                  if np.ndim(x) == 2 and any(re.search(t, name) for t in self.targets)]
        if not chosen:
            kernels = sorted({re.sub(r"^h_\d+/", "h_*/", n) for n, x in leaves.items() if np.ndim(x) == 2})
            raise ValueError(f"LoRA targets {list(self.targets)} select no 2-D weight; candidates: {kernels}")
        return chosen

    def init(self, params, rng) -> dict:
        """{path: {"a", "b"}} for every selected kernel. A ~ N(0, 1/in) as the paper's code, B = 0."""
        leaves = named_leaves(params)
        adapters = {}
        for i, name in enumerate(self.paths(params)):
            fan_in, fan_out = leaves[name].shape
            a = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, self.rank), jnp.float32) / math.sqrt(fan_in)
            adapters[name] = {"a": a, "b": jnp.zeros((self.rank, fan_out), jnp.float32)}
        return adapters

    def attach(self, base, rng) -> dict:
        return {"base": base, "lora": self.init(base, rng), "lora_scale": jnp.float32(self.alpha / self.rank)}


def merge(params) -> dict:
    """Plain GPT-Neo params from {"base", "lora", "lora_scale"}: W + scale * A @ B where adapted."""
    adapters, scale = params["lora"], params["lora_scale"]

    def one(path, w):
        adapter = adapters.get(path_name(path))
        return w if adapter is None else w + scale * (adapter["a"] @ adapter["b"]).astype(w.dtype)
    return jax.tree_util.tree_map_with_path(one, params["base"])


def is_lora(params) -> bool:
    return isinstance(params, dict) and set(params) == {"base", "lora", "lora_scale"}


def adapter_bytes(params_shapes, lora: Lora) -> int:
    """float32 bytes of the adapters `lora` would add to params of these shapes (nothing allocated)."""
    leaves = named_leaves(params_shapes)
    return sum(4 * lora.rank * (leaves[n].shape[0] + leaves[n].shape[1]) for n in lora.paths(params_shapes))
