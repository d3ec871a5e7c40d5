"""Everything that touches disk formats: Hugging Face directories, original mesh-tensorflow
checkpoints, the native neojax format, and (for training) orbax checkpoint managers.

    from neojax import checkpoint
    model = checkpoint.load("path/to/gpt-neo-125M")   # format detected
    model.config, model.params, model.tokenizer
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional

import jax

from neojax import paths
from neojax.checkpoint.hf import load_hf, save_hf
from neojax.checkpoint.io import NATIVE_MARKER, check_params, load_native, load_workdir, save_native
from neojax.checkpoint.mesh_tf import config_from_mtf_json, load_mesh_tf
from neojax.data.tokenizer import Tokenizer
from neojax.model.config import GPTNeoConfig, model_shape
from neojax.model.quant import is_quantized, quantize_params

FORMATS = ("hf", "neojax", "workdir", "mesh_tf")


class Pretrained(NamedTuple):
    config: GPTNeoConfig
    params: Any
    tokenizer: Optional[Tokenizer]


def detect_format(path: str) -> str:
    """'hf', 'neojax', 'workdir' or 'mesh_tf' for a path (local or object storage); a clear error for
    anything else."""
    root = paths.path(path)
    index = paths.path(str(path) + ".index")
    if not root.exists() and not index.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if root.is_dir():
        if (root / NATIVE_MARKER).exists():
            return "neojax"
        if (root / "model" / NATIVE_MARKER).exists() and (root / "checkpoints").is_dir():
            return "workdir"
        if (root / "config.json").exists():
            try:
                hf_config = json.loads((root / "config.json").read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}/config.json is not valid JSON ({e})") from None
            if not isinstance(hf_config, dict):
                raise ValueError(f"{path}/config.json holds a {type(hf_config).__name__}, not a JSON object")
            model_type = hf_config.get("model_type")
            if model_type == "gpt_neo":
                return "hf"
            if model_type is not None:
                raise ValueError(f"{path}/config.json has model_type {model_type!r}; neojax loads GPT-Neo "
                                 "('gpt_neo') checkpoints only")
        if (root / "checkpoint").exists() or any(p.name.endswith(".index") for p in root.iterdir()):
            return "mesh_tf"
    elif index.exists():
        return "mesh_tf"
    raise ValueError(f"cannot tell the checkpoint format of {path}: expected a Hugging Face directory "
                     f"(config.json + weights), a neojax directory ({NATIVE_MARKER} + params/), a training "
                     "workdir (model/ + checkpoints/), or a "
                     "mesh-tensorflow checkpoint (*.index + *.data-*)")


def stated_shape(path: str) -> Optional[GPTNeoConfig]:
    """The config a checkpoint states without its weights being read, or None (mesh-tensorflow: its
    shape comes from --mtf_config with the weights)."""
    return None if detect_format(path) == "mesh_tf" else model_shape(path)


def load(path: str, mtf_config: Optional[str] = None, quantize: Optional[str] = None,
         **config_overrides) -> Pretrained:
    """Config, params (host numpy float32) and tokenizer from any supported format.

    `config_overrides` set execution fields such as dtype="bfloat16", remat="full" or
    kv_cache="int8"; quantize="int8" returns int8 weights with scales (neojax.model.quant)."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: choose 'int8' (or None)")
    model = _load(path, mtf_config, **config_overrides)
    if quantize:  # on the host's CPU: an accelerator never holds the float model whole
        with jax.default_device(jax.devices("cpu")[0]):
            model = model._replace(params=jax.device_get(quantize_params(model.params)))
    return model


def _load(path: str, mtf_config: Optional[str] = None, **config_overrides) -> Pretrained:
    fmt = detect_format(path)
    if paths.is_remote(path) and (fmt in ("hf", "mesh_tf") or not paths.orbax_native(path)):
        # weights are read whole anyway: fetch them once (a workdir: its model card and checkpoints only)
        with paths.local_copy(path, only=("model", "checkpoints") if fmt == "workdir" else None) as local:
            return _load(local, mtf_config, **config_overrides)
    if fmt == "hf":
        return Pretrained(*load_hf(path, **config_overrides))
    if fmt in ("neojax", "workdir"):
        config, params, tokenizer = (load_native if fmt == "neojax" else load_workdir)(path)
        return Pretrained(config.replace(**config_overrides), params, tokenizer)
    if mtf_config:
        with open(mtf_config) as f:
            return Pretrained(*load_mesh_tf(path, config_from_mtf_json(json.load(f), **config_overrides)))
    return Pretrained(*load_mesh_tf(path, **config_overrides))


def save(path: str, model: Pretrained, to: str, overwrite: bool = False) -> str:
    """Write `model` as a Hugging Face ('hf') or neojax ('neojax') directory, atomically."""
    if to == "hf":
        if is_quantized(model.params):
            raise ValueError("the model's weights are int8 (quantised); a Hugging Face GPT-Neo checkpoint holds "
                             "float weights: dequantise them first (convert --dequantize) or convert the float source")
        return save_hf(path, model.params, model.config, model.tokenizer, overwrite)
    if to == "neojax":
        return save_native(path, model.params, model.config, model.tokenizer, overwrite)
    raise ValueError(f"cannot write format {to!r}; choose 'hf' or 'neojax'")


__all__ = ["FORMATS", "Pretrained", "atomic_directory", "check_params", "detect_format", "load", "save",
           "stated_shape"]
