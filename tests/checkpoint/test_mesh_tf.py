"""Original mesh-tensorflow checkpoints, written here with TensorFlow under the original names."""
import json

import jax
import numpy as np
import pytest
from support import hf_logits

from neojax import checkpoint
from neojax.checkpoint.hf import load_hf
from neojax.model import GPTNeo


def _write_mtf(prefix, params, config, vocab_pad=14):
    import tensorflow as tf
    names, tensors = ["gpt2/wte", "gpt2/wpe", "gpt2/ln_f/g", "gpt2/ln_f/b"], [
        np.concatenate([params["wte"], np.full((vocab_pad, config.hidden_size), 7.0, np.float32)]),
        params["wpe"], params["ln_f"]["scale"], params["ln_f"]["bias"]]
    for i in range(config.num_layers):
        h = params[f"h_{i}"]
        heads = (config.num_heads, config.head_dim)
        block = {
            "norm_1/g": h["ln_1"]["scale"], "norm_1/b": h["ln_1"]["bias"],
            "attn/q": h["attn"]["q_proj"]["kernel"].reshape(config.hidden_size, *heads),  # [d, heads, head_dim]
            "attn/k": h["attn"]["k_proj"]["kernel"], "attn/v": h["attn"]["v_proj"]["kernel"],
            "attn/o": h["attn"]["out_proj"]["kernel"],
            "attn/compute_output_bias/o_b": h["attn"]["out_proj"]["bias"],
            "norm_2/g": h["ln_2"]["scale"], "norm_2/b": h["ln_2"]["bias"],
            "mlp/conv1d_main/c_fc/kernel": h["mlp"]["c_fc"]["kernel"],
            "mlp/conv1d_main/c_fc/bias": h["mlp"]["c_fc"]["bias"],
            "mlp/conv1d_main/c_proj/kernel": h["mlp"]["c_proj"]["kernel"],
            "mlp/conv1d_main/c_proj/bias": h["mlp"]["c_proj"]["bias"],
        }
        for k, v in block.items():
            names.append(f"gpt2/h{i}/{k}")
            tensors.append(np.asarray(v))
            names.append(f"gpt2/h{i}/{k}/adam_m")  # optimizer slots must be skipped
            tensors.append(np.zeros_like(v))
    names.append("global_step")
    tensors.append(np.array(1000, np.int64))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(t) for t in tensors])


@pytest.fixture(scope="module")
def mtf_dir(hf_dirs, tmp_path_factory):
    directory, torch_model, seq_len = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    out = tmp_path_factory.mktemp("mtf")
    _write_mtf(str(out / "model.ckpt-1000"), params, config)
    (out / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1000"\n')
    (out / "run_config.json").write_text(json.dumps({
        "n_embd": config.hidden_size, "n_layer": config.num_layers, "n_head": config.num_heads,
        "attention_types": [[["global", "local"], 2]], "n_vocab": config.vocab_size, "n_ctx": 64,
        "window_size": 7, "res_dropout": 0, "embed_dropout": 0, "attn_dropout": 0, "lr": 2e-4}))
    return str(out), params, torch_model, seq_len


@pytest.mark.slow
def test_mesh_tf_checkpoint_reads_into_the_same_params(mtf_dir):
    path, params, torch_model, seq_len = mtf_dir
    assert checkpoint.detect_format(path) == "mesh_tf"
    model = checkpoint.load(path)  # the MLP width (40, not 4*d) is read off the weights
    assert model.config.attention_layers == ("global", "local") * 2 and model.config.window_size == 7
    assert model.config.intermediate_size == 40
    jax.tree.map(np.testing.assert_array_equal, model.params, params)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(1, seq_len))
    ours = np.asarray(jax.jit(GPTNeo(model.config).apply)({"params": model.params}, tokens))
    assert np.abs(ours - hf_logits(torch_model, tokens)).max() < 1e-4


def test_mesh_tf_config_mismatch_is_clear(mtf_dir, tmp_path):
    path, _, _, _ = mtf_dir
    with pytest.raises(ValueError, match=r"c_fc/kernel.*does not fit \(24, 96\)"):
        checkpoint.load(path, intermediate_size=96)
    run_config = json.loads(open(f"{path}/run_config.json").read())
    run_config.update(n_layer=2, attention_types=[[["global", "local"], 1]])
    (tmp_path / "short.json").write_text(json.dumps(run_config))
    with pytest.raises(ValueError, match="variables neojax does not map.*gpt2/h2/"):
        checkpoint.load(path, mtf_config=str(tmp_path / "short.json"))
