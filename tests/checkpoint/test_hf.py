"""Hugging Face directories: load without torch, export that transformers loads, exact round trip."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from support import hf_logits, random_hf_model

from neojax import checkpoint
from neojax.checkpoint.hf import load_hf, save_hf
from neojax.model import GPTNeo


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(la, lb))


@pytest.mark.slow
def test_pytorch_bin_loads_without_torch(hf_dirs, tmp_path):
    import torch
    directory, torch_model, _ = hf_dirs["window7_inner40"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(os.path.join(directory, "config.json"), bin_dir)
    state = torch_model.state_dict()
    state["transformer.h.0.attn.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)  # old buffer
    torch.save(state, bin_dir / "pytorch_model.bin")
    # A child process where importing torch fails proves the loader never needs it.
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, jax\nfrom neojax.checkpoint.hf import load_hf\n"
            f"c, p, t = load_hf({str(bin_dir)!r})\n"
            "np.savez(sys.argv[1], **{jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(p)})")
    out = tmp_path / "params.npz"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)
    from_bin = dict(np.load(out))
    _, from_st, _ = load_hf(directory)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(from_st)}
    assert sorted(flat) == sorted(from_bin)
    assert all(np.array_equal(flat[k], from_bin[k]) for k in flat)


def test_export_loads_in_transformers_with_same_logits(hf_dirs, tmp_path):
    import transformers
    directory, _, seq_len = hf_dirs["mixed_pattern"]
    config, params, _ = load_hf(directory)
    out = save_hf(str(tmp_path / "export"), params, config)
    reloaded = transformers.GPTNeoForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, seq_len))
    ours = np.asarray(jax.jit(GPTNeo(config).apply)({"params": params}, tokens))
    assert np.abs(hf_logits(reloaded, tokens) - ours).max() < 1e-4
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()  # tied


def test_round_trip_is_bit_identical(hf_dirs, tmp_path):
    directory, _, _ = hf_dirs["default_window"]
    config, params, _ = load_hf(directory)
    save_hf(str(tmp_path / "a"), params, config)
    config2, params2, _ = load_hf(str(tmp_path / "a"))
    assert config2 == config
    assert _leaves_equal(params, params2)


def test_native_round_trip_is_bit_identical(hf_dirs, tmp_path):
    directory, _, _ = hf_dirs["window7_inner40"]
    model = checkpoint.load(directory)
    checkpoint.save(str(tmp_path / "native"), model, to="neojax")
    assert checkpoint.detect_format(str(tmp_path / "native")) == "neojax"
    again = checkpoint.load(str(tmp_path / "native"))
    assert again.config == model.config
    assert _leaves_equal(model.params, again.params)


def test_export_refuses_to_clobber_and_overwrite_is_atomic(hf_dirs, tmp_path):
    directory, _, _ = hf_dirs["mixed_pattern"]
    config, params, _ = load_hf(directory)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf(str(dst), params, config)
    assert (dst / "precious.txt").read_text() == "keep me"
    broken = dict(params)
    broken["wte"] = object()  # fails halfway through the write
    with pytest.raises(Exception):
        save_hf(str(dst), broken, config, overwrite=True)
    assert (dst / "precious.txt").exists()  # the failed write changed nothing
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # and left no debris
    save_hf(str(dst), params, config, overwrite=True)
    assert not (dst / "precious.txt").exists() and (dst / "model.safetensors").exists()


def test_bad_directories_give_clear_errors(hf_dirs, tmp_path):
    directory, _, _ = hf_dirs["mixed_pattern"]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(str(tmp_path))
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(os.path.join(directory, "config.json"), only_config)
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_hf(str(only_config))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        checkpoint.load(str(gpt2))
    wrong = tmp_path / "wrong_shape"
    shutil.copytree(directory, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["intermediate_size"] = 99
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"h_0/mlp/c_fc/bias has shape \(64,\) but the config expects \(99,\)"):
        load_hf(str(wrong))
    cfg["intermediate_size"], cfg["num_layers"] = None, 4
    cfg["attention_types"] = [[["global", "local"], 2]]
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing .* parameter"):
        load_hf(str(wrong))
    (wrong / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_hf(str(wrong))
    with pytest.raises(ValueError, match="cannot tell the checkpoint format"):
        checkpoint.detect_format(str(tmp_path / "only_config" / ".."))  # a plain folder


def test_untied_head_is_rejected(tmp_path):
    model = random_hf_model(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2,
                            attention_types=[[["global"], 1]], max_position_embeddings=16)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    from neojax.checkpoint.hf import params_from_state_dict
    from neojax.model.config import GPTNeoConfig
    with pytest.raises(ValueError, match="untied"):
        params_from_state_dict(state, GPTNeoConfig.from_hf_dict(model.config.to_dict()))


def _corpus_strings():
    """Real text of many kinds: Python sources, prose with unicode, odd whitespace, bytes outside any vocabulary."""
    import glob
    import sysconfig
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "email", "*.py")))[:12]
    texts = [open(f, encoding="utf-8").read() for f in files]
    chunks = [t[i:i + 400] for t in texts for i in range(0, len(t), 1777)]
    return chunks + ["Ünïcödé — “quotes” 漢字 🙂 emoji", "tabs\tand\n\nnewlines  and   spaces ", "  ", "0123456789",
                     "The Pile is a large, diverse, open source language modelling data set."]


@pytest.mark.slow
def test_sentencepiece_export_encodes_in_transformers_exactly_as_neojax(tmp_path):
    """The quickstart's tokenizer, exported to Hugging Face: AutoTokenizer gives neojax's ids on a corpus."""
    import stat

    import transformers

    from neojax.checkpoint.hf import save_hf
    from neojax.data.tokenizer import train_sentencepiece
    from neojax.model import init_params, preset
    corpus = _corpus_strings()
    tok = train_sentencepiece(corpus[: len(corpus) // 2], vocab_size=700, model_path=str(tmp_path / "sp.model"))
    config = preset("tiny", vocab_size=tok.vocab_size)
    previous = os.umask(0o022)
    try:
        save_hf(str(tmp_path / "hf"), jax.device_get(init_params(config, jax.random.key(0))), config, tok)
    finally:
        os.umask(previous)
    for name in os.listdir(tmp_path / "hf"):
        assert stat.S_IMODE(os.stat(tmp_path / "hf" / name).st_mode) == 0o644, name  # as any program writes
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert not isinstance(hf_tok, transformers.GPT2Tokenizer)
    for text in corpus:  # the second half was not seen in training
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text), text[:60]
        assert hf_tok.decode(tok.encode(text)) == text
    assert hf_tok.eos_token_id == tok.eos_id
    from neojax import checkpoint
    back = checkpoint.load(str(tmp_path / "hf"))
    assert back.tokenizer.kind == "sentencepiece" and back.tokenizer.encode(corpus[0]) == tok.encode(corpus[0])
