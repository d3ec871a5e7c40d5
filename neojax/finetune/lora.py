"""LoRA adapters on disk: a few MB of adapters and their settings, saved and loaded without the base.

    lora.save_adapters("adapters/", params, Lora(rank=8))       # params: {"base", "lora", "lora_scale"}
    params, settings = lora.load_adapters("adapters/", base_params)

The adapters themselves (attach, merge, which weights) are `neojax.model.lora`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import safetensors.numpy

from neojax.files import atomic_directory
from neojax.model.lora import Lora, is_lora, merge
from neojax.tree import named_leaves

__all__ = ["ADAPTER_FILE", "Lora", "is_lora", "load_adapters", "merge", "save_adapters"]

# --- adapters alone on disk -----------------------------------------------------------------------
ADAPTER_FILE = "adapters.safetensors"


def save_adapters(directory: str, params, lora: Lora, overwrite: bool = False) -> str:
    """Write only the adapters (a few MB) and their settings, atomically."""
    tensors = {f"{name}.{k}": np.asarray(v, np.float32) for name, ab in params["lora"].items() for k, v in ab.items()}
    meta = {"rank": str(lora.rank), "alpha": str(lora.alpha), "targets": json.dumps(list(lora.targets))}
    with atomic_directory(directory, overwrite) as tmp:
        safetensors.numpy.save_file(tensors, os.path.join(tmp, ADAPTER_FILE), metadata=meta)
    return directory


def load_adapters(directory: str, base) -> tuple[dict, Lora]:
    """({"base", "lora", "lora_scale"}, Lora) from saved adapters and the base params they were
    trained on; names or shapes that do not fit the base are an error."""
    path = os.path.join(directory, ADAPTER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no {ADAPTER_FILE}: not a LoRA adapter directory")
    with safetensors.safe_open(path, "numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lora = Lora(int(meta["rank"]), float(meta["alpha"]), tuple(json.loads(meta["targets"])))
    leaves = named_leaves(base)
    adapters: dict = {}
    for key, value in tensors.items():
        name, part = key.rsplit(".", 1)
        if name not in leaves:
            raise ValueError(f"adapter {name} has no matching weight in the base model")
        adapters.setdefault(name, {})[part] = value
    for name, ab in adapters.items():
        if ab["a"].shape[0] != leaves[name].shape[0] or ab["b"].shape[1] != leaves[name].shape[1]:
            raise ValueError(f"adapter {name} has shapes {ab['a'].shape} x {ab['b'].shape}, the base weight "
                             f"{leaves[name].shape}: these adapters were trained on another model")
    return {"base": base, "lora": adapters, "lora_scale": np.float32(lora.alpha / lora.rank)}, lora
