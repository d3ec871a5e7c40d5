"""Starting points are checked before any work: neojax's own int8 exports are valid init_from and
teacher inputs (dequantised, said), overrides that clash with init_from's architecture are one
line naming them, and a sequence longer than the model's context is refused before a token is
cached."""
import os

import jax
import numpy as np
import pytest
from support import small_config

from neojax import checkpoint
from neojax.errors import UsageError
from neojax.model.quant import dequantize_params, is_quantized
from neojax.train import objectives
from neojax.train.setup import build_data, build_model


@pytest.fixture(scope="module")
def int8_export(tiny_hf_with_tokenizer, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("int8") / "model")
    model = checkpoint.load(tiny_hf_with_tokenizer, quantize="int8")
    checkpoint.save(directory, model, to="neojax")
    return directory, model


def _config(corpus, tiny_hf_with_tokenizer, **model):
    c = small_config(corpus, tiny_hf_with_tokenizer)
    c.model.overrides = {}
    c.model.update(**model)
    return c


def test_an_int8_export_is_a_starting_point_and_a_teacher(int8_export, corpus, tiny_hf_with_tokenizer, tmp_path,
                                                          capfd):
    directory, model = int8_export
    want = jax.device_get(dequantize_params(model.params))
    _, _, params = build_model(_config(corpus, tiny_hf_with_tokenizer, init_from=directory), str(tmp_path))
    assert "int8 weights, dequantised" in capfd.readouterr().out
    assert not is_quantized(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
    c = _config(corpus, tiny_hf_with_tokenizer, init_from=tiny_hf_with_tokenizer)
    c.objective, c.distill.teacher = "distill", directory
    setup = objectives.distillation(c, str(tmp_path / "distil"))
    assert not is_quantized(setup.frozen[1])


def test_overrides_that_clash_with_init_from_are_named(corpus, tiny_hf_with_tokenizer, tmp_path):
    own = checkpoint.load(tiny_hf_with_tokenizer).config
    same = dict(hidden_size=own.hidden_size, num_layers=own.num_layers, num_heads=own.num_heads,
                attention_types=[[list(own.attention_types[0][0]), own.attention_types[0][1]]], window_size=16)
    c = _config(corpus, tiny_hf_with_tokenizer, init_from=tiny_hf_with_tokenizer)
    c.model.overrides = same  # the checkpoint's own values (as an experiment's overrides may be): accepted
    assert build_model(c, str(tmp_path))[0].hidden_size == own.hidden_size
    c.model.overrides = {**same, "hidden_size": 64, "dtype": "bfloat16"}
    with pytest.raises(UsageError, match=r"model\.overrides\.hidden_size=64 \(the checkpoint has 32\) differs"):
        build_model(c, str(tmp_path))


def test_a_sequence_longer_than_the_context_is_refused_before_caching(corpus, tiny_hf_with_tokenizer, tmp_path):
    c = _config(corpus, tiny_hf_with_tokenizer, init_from=tiny_hf_with_tokenizer)
    c.data.seq_len = 512
    model_config, tokenizer, _ = build_model(c, str(tmp_path))
    with pytest.raises(UsageError, match="data.seq_len=512: exceeds the model's 128-token context"):
        build_data(c, tokenizer, str(tmp_path), model_config)
    assert not os.path.exists(tmp_path / "data_cache")
