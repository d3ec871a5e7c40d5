"""Read an original EleutherAI mesh-tensorflow GPT-Neo checkpoint into neojax params.

Variables are named like `gpt2/h3/attn/q`, `gpt2/h3/norm_1/g`, `gpt2/h3/mlp/conv1d_main/c_fc/kernel`;
kernels are stored (in, out) as Flax keeps them. Optimizer slots (`adam`, `slot`) and the step
counter are skipped. The model shape comes from the original run's JSON config (`n_embd`,
`n_layer`, `n_head`, `attention_types`, ...), which these checkpoints do not contain.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from neojax.checkpoint.io import check_params
from neojax.cli import require
from neojax.model.config import GPTNeoConfig
from neojax.tree import set_path

_SKIP = ("adam", "slot", "global_step", "beta1_power", "beta2_power")
_BLOCK = {  # mtf name under gpt2/h{i}/ -> (neojax path, 2-D shape as (in, out) or None for vectors)
    "norm_1/g": (("ln_1", "scale"), None), "norm_1/b": (("ln_1", "bias"), None),
    "attn/q": (("attn", "q_proj", "kernel"), "dd"), "attn/k": (("attn", "k_proj", "kernel"), "dd"),
    "attn/v": (("attn", "v_proj", "kernel"), "dd"), "attn/o": (("attn", "out_proj", "kernel"), "dd"),
    "attn/compute_output_bias/o_b": (("attn", "out_proj", "bias"), None),
    "norm_2/g": (("ln_2", "scale"), None), "norm_2/b": (("ln_2", "bias"), None),
    "mlp/conv1d_main/c_fc/kernel": (("mlp", "c_fc", "kernel"), "di"),
    "mlp/conv1d_main/c_fc/bias": (("mlp", "c_fc", "bias"), None),
    "mlp/conv1d_main/c_proj/kernel": (("mlp", "c_proj", "kernel"), "id"),
    "mlp/conv1d_main/c_proj/bias": (("mlp", "c_proj", "bias"), None),
}
_TOP = {"wte": (("wte",), None), "wpe": (("wpe",), None), "ln_f/g": (("ln_f", "scale"), None),
        "ln_f/b": (("ln_f", "bias"), None)}


def config_from_mtf_json(d: dict, **overrides) -> GPTNeoConfig:
    """GPTNeoConfig from the original repository's run config (configs/gpt3_*.json)."""
    try:
        kwargs = dict(hidden_size=d["n_embd"], num_layers=d["n_layer"], num_heads=d["n_head"],
                      attention_types=d["attention_types"])
    except KeyError as e:
        raise ValueError(f"mesh-tensorflow config lacks {e.args[0]!r}; it needs n_embd, n_layer, n_head, "
                         "attention_types") from e
    for ours, theirs in (("vocab_size", "n_vocab"), ("max_position_embeddings", "n_ctx"),
                         ("max_position_embeddings", "n_positions"), ("window_size", "window_size"),
                         ("embed_dropout", "embed_dropout"), ("attention_dropout", "attn_dropout"),
                         ("resid_dropout", "res_dropout")):
        if theirs in d:
            kwargs[ours] = d[theirs]
    return GPTNeoConfig(**{**kwargs, **overrides})


def find_checkpoint(path: str) -> str:
    """The checkpoint prefix for a directory (latest) or a prefix path."""
    tf = require("tensorflow", "reading mesh-tensorflow checkpoints", "tensorflow-cpu")
    if os.path.exists(path + ".index"):
        return path
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        indexes = sorted(glob.glob(os.path.join(path, "*.index")))
        if indexes:
            return indexes[-1][:-len(".index")]
    raise FileNotFoundError(f"no TensorFlow checkpoint at {path}: expected model.ckpt-N.index files")


def find_config(path: str, **overrides) -> GPTNeoConfig:
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    for candidate in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(candidate) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError:
                continue
        if isinstance(d, dict) and "n_embd" in d:
            return config_from_mtf_json(d, **overrides)
    raise FileNotFoundError(f"no mesh-tensorflow run config (a JSON with n_embd, n_layer, n_head, attention_types) "
                            f"next to {path}; pass it with --mtf_config or config=")


def load_mesh_tf(path: str, config: GPTNeoConfig | None = None, **overrides):
    """(config, params, None) from an original GPT-Neo checkpoint directory or prefix.

    Without `config`, the run config JSON next to the checkpoint is used; the MLP width, which
    those configs do not state, is read off the weights."""
    tf = require("tensorflow", "reading mesh-tensorflow checkpoints", "tensorflow-cpu")
    prefix = find_checkpoint(path)
    reader = tf.train.load_checkpoint(prefix)
    config = config or find_config(path, **overrides)
    c_fc = reader.get_variable_to_shape_map().get("gpt2/h0/mlp/conv1d_main/c_fc/kernel")
    if c_fc and config.intermediate_size is None and np.prod(c_fc) != 4 * config.hidden_size ** 2:
        config = config.replace(intermediate_size=int(np.prod(c_fc)) // config.hidden_size)
    names = [n for n in reader.get_variable_to_shape_map() if not any(s in n.lower() for s in _SKIP)]
    d, inner = config.hidden_size, config.inner_size
    dims = {"dd": (d, d), "di": (d, inner), "id": (inner, d)}
    params, used = {}, set()

    def put(name, path_, kind):
        value = np.asarray(reader.get_tensor(name), np.float32)
        if kind is not None:
            if value.size != np.prod(dims[kind]):
                raise ValueError(f"{name}: {value.shape} does not fit {dims[kind]} from the config")
            value = value.reshape(dims[kind])
        elif path_ == ("wte",):
            value = value[:config.vocab_size]  # mtf pads the vocabulary to a multiple of the mesh
        set_path(params, path_, value)
        used.add(name)

    wanted = {f"gpt2/{k}": v for k, v in _TOP.items()}
    for i in range(config.num_layers):
        wanted.update({f"gpt2/h{i}/{k}": ((f"h_{i}",) + p, kind) for k, (p, kind) in _BLOCK.items()})
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise ValueError(f"checkpoint {prefix} lacks {len(missing)} variable(s), e.g. {missing[:3]}; "
                         "does the run config match it?")
    for name, (path_, kind) in wanted.items():
        put(name, path_, kind)
    extra = sorted(set(names) - used)
    if extra:
        raise ValueError(f"checkpoint {prefix} has variables neojax does not map: {extra[:5]}")
    check_params(params, config, source=prefix)
    return config, params, None
