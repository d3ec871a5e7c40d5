"""Hugging Face GPT-Neo directories <-> neojax (config, params, tokenizer). No torch needed.

One table maps each parameter both ways: PyTorch Linear weights are stored (out, in), Flax
kernels (in, out), so those are transposed; everything else is copied as is.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import safetensors
import safetensors.numpy

from neojax.checkpoint import torch_pickle
from neojax.checkpoint.io import check_params
from neojax.data.tokenizer import Tokenizer
from neojax.files import atomic_directory
from neojax.model.config import GPTNeoConfig
from neojax.tree import get_path, set_path

# (hf name, neojax path, transposed). "{i}" is the block index.
_GLOBAL = [("transformer.wte.weight", ("wte",), False), ("transformer.wpe.weight", ("wpe",), False),
           ("transformer.ln_f.weight", ("ln_f", "scale"), False), ("transformer.ln_f.bias", ("ln_f", "bias"), False)]
_BLOCK = [
    ("ln_1.weight", ("ln_1", "scale"), False), ("ln_1.bias", ("ln_1", "bias"), False),
    ("attn.attention.q_proj.weight", ("attn", "q_proj", "kernel"), True),
    ("attn.attention.k_proj.weight", ("attn", "k_proj", "kernel"), True),
    ("attn.attention.v_proj.weight", ("attn", "v_proj", "kernel"), True),
    ("attn.attention.out_proj.weight", ("attn", "out_proj", "kernel"), True),
    ("attn.attention.out_proj.bias", ("attn", "out_proj", "bias"), False),
    ("ln_2.weight", ("ln_2", "scale"), False), ("ln_2.bias", ("ln_2", "bias"), False),
    ("mlp.c_fc.weight", ("mlp", "c_fc", "kernel"), True), ("mlp.c_fc.bias", ("mlp", "c_fc", "bias"), False),
    ("mlp.c_proj.weight", ("mlp", "c_proj", "kernel"), True), ("mlp.c_proj.bias", ("mlp", "c_proj", "bias"), False),
]
# Buffers older transformers versions saved with the weights; they carry no parameters.
_BUFFERS = re.compile(r"transformer\.h\.\d+\.attn\.attention\.(bias|masked_bias)$")


def parameter_table(config: GPTNeoConfig):
    """[(hf_name, neojax_path, transposed)] for every parameter of `config`."""
    rows = list(_GLOBAL)
    for i in range(config.num_layers):
        rows += [(f"transformer.h.{i}.{name}", (f"h_{i}",) + path, t) for name, path, t in _BLOCK]
    return rows


def params_from_state_dict(state: dict[str, np.ndarray], config: GPTNeoConfig, source: str = "checkpoint") -> dict:
    """HF state dict -> neojax params (float32 numpy), checking names and shapes."""
    table = parameter_table(config)
    missing = [hf_name for hf_name, _, _ in table if hf_name not in state]
    if missing:
        raise ValueError(f"{source} is missing {len(missing)} parameter(s) the config needs, e.g. {missing[:3]}; "
                         "is num_layers in config.json right?")
    known = {row[0] for row in table} | {"lm_head.weight"}
    extra = sorted(k for k in state if k not in known and not _BUFFERS.search(k))
    if extra:
        raise ValueError(f"{source} has parameter(s) GPT-Neo with this config does not: {extra[:5]}; "
                         "is num_layers in config.json right?")
    params = {}
    for hf_name, path, transposed in table:
        value = np.asarray(state[hf_name], dtype=np.float32)
        set_path(params, path, value.T if transposed else value)
    check_params(params, config, source)
    if "lm_head.weight" in state and not np.array_equal(np.asarray(state["lm_head.weight"], np.float32), params["wte"]):
        raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; GPT-Neo ties them and "
                         "neojax cannot represent an untied head")
    return params


def state_dict_from_params(params, config: GPTNeoConfig) -> dict[str, np.ndarray]:
    """neojax params -> HF state dict (float32, C-contiguous numpy), tied lm_head omitted as HF does."""
    out = {}
    for hf_name, path, transposed in parameter_table(config):
        value = np.asarray(get_path(params, path), dtype=np.float32)
        out[hf_name] = np.ascontiguousarray(value.T if transposed else value)
    return out


# --- files ----------------------------------------------------------------------------------------
def read_config(directory: str, **overrides) -> GPTNeoConfig:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face model directory")
    with open(path) as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a {type(d).__name__}, not a JSON object")
    try:
        return GPTNeoConfig.from_hf_dict(d, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a HF directory: model.safetensors, pytorch_model.bin, or their sharded forms."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        files = []
        if os.path.exists(os.path.join(directory, single)):
            files = [single]
        elif os.path.exists(os.path.join(directory, index)):
            with open(os.path.join(directory, index)) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        if files:
            state = {}
            for name in files:
                path = os.path.join(directory, name)
                try:
                    state.update(safetensors.numpy.load_file(path) if name.endswith(".safetensors")
                                 else torch_pickle.load(path))
                except (OSError, safetensors.SafetensorError) as e:
                    raise ValueError(f"cannot read weights file {path}: {e}") from e
            return state
    raise FileNotFoundError(f"{directory} has no weights: expected model.safetensors or pytorch_model.bin "
                            "(or their sharded *.index.json forms)")


def load_hf(directory: str, **config_overrides):
    """(config, params, tokenizer or None) from a Hugging Face GPT-Neo directory."""
    config = read_config(directory, **config_overrides)
    params = params_from_state_dict(read_state_dict(directory), config, source=directory)
    tokenizer = Tokenizer.find(directory)
    return config, params, tokenizer


def save_hf(directory: str, params, config: GPTNeoConfig, tokenizer: Tokenizer | None = None,
            overwrite: bool = False) -> str:
    """Write a directory that transformers.GPTNeoForCausalLM.from_pretrained loads (atomically)."""
    return _write_hf(directory, config.to_hf_dict(), state_dict_from_params(params, config), tokenizer, overwrite)


def _write_hf(directory, config_dict, state, tokenizer, overwrite) -> str:
    with atomic_directory(directory, overwrite) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({**config_dict, "torch_dtype": "float32"}, f, indent=2)
        safetensors.numpy.save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_hf(tmp, config_dict.get("max_position_embeddings", 2048))
    return directory


# --- sequence classification (GPTNeoForSequenceClassification) ---------------------------------------
def load_hf_classifier(directory: str, **config_overrides):
    """(config, params {"transformer", "score"}, tokenizer or None, label names) from a
    GPTNeoForSequenceClassification directory."""
    config = read_config(directory, **config_overrides)
    state = read_state_dict(directory)
    if "score.weight" not in state:
        raise ValueError(f"{directory} has no score.weight: not a GPTNeoForSequenceClassification checkpoint "
                         "(start a new head from a language model with neojax.model.classifier.init_classifier)")
    score = np.asarray(state.pop("score.weight"), np.float32)
    params = {"transformer": params_from_state_dict(state, config, source=directory), "score": {"kernel": score.T}}
    with open(os.path.join(directory, "config.json")) as f:
        id2label = json.load(f).get("id2label") or {}
    labels = [id2label.get(str(i), f"LABEL_{i}") for i in range(score.shape[0])]
    tokenizer = Tokenizer.find(directory)
    return config, params, tokenizer, labels


def save_hf_classifier(directory: str, params, config: GPTNeoConfig, labels, tokenizer: Tokenizer | None = None,
                       pad_token_id: int | None = None, overwrite: bool = False) -> str:
    """Write a directory that transformers.GPTNeoForSequenceClassification.from_pretrained loads."""
    labels = list(labels)
    config_dict = {**config.to_hf_dict(), "architectures": ["GPTNeoForSequenceClassification"],
                   "id2label": {str(i): str(name) for i, name in enumerate(labels)},
                   "label2id": {str(name): i for i, name in enumerate(labels)},
                   "pad_token_id": config.eos_token_id if pad_token_id is None else pad_token_id}
    state = state_dict_from_params(params["transformer"], config)
    state["score.weight"] = np.ascontiguousarray(np.asarray(params["score"]["kernel"], np.float32).T)
    return _write_hf(directory, config_dict, state, tokenizer, overwrite)
