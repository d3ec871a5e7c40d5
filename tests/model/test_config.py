import json

import pytest

from neojax.model import GPTNeoConfig, expand_attention_types, preset


def test_attention_types_expand_in_order():
    assert expand_attention_types([[["global", "local"], 2]], 4) == ("global", "local", "global", "local")
    assert expand_attention_types([[["local"], 1], [["global", "local"], 1]], 3) == ("local", "global", "local")


def test_attention_types_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="expands to 4 layers but num_layers=6"):
        GPTNeoConfig(num_layers=6, attention_types=[[["global", "local"], 2]])


def test_malformed_attention_types_name_the_format():
    with pytest.raises(ValueError, match=r'\[\[\["global", "local"\], 6\]\]'):
        GPTNeoConfig(attention_types=["global", "local"])


def test_config_is_frozen_and_validates():
    cfg = preset("gpt-neo-125M")
    with pytest.raises(Exception):
        cfg.hidden_size = 3
    with pytest.raises(ValueError, match="divisible"):
        GPTNeoConfig(hidden_size=10, num_heads=3, num_layers=1, attention_types=[[["global"], 1]])
    with pytest.raises(ValueError, match="valid fields"):
        cfg.replace(hidden_sise=3)
    with pytest.raises(ValueError, match="unknown preset 'gpt-neo-6B'.*gpt-neo-1.3B"):
        preset("gpt-neo-6B")


def test_hf_dict_round_trip_and_transformers_reads_it(tmp_path):
    import transformers
    cfg = preset("gpt-neo-1.3B")
    d = cfg.to_hf_dict()
    assert GPTNeoConfig.from_hf_dict(d) == cfg
    (tmp_path / "config.json").write_text(json.dumps(d))
    hf = transformers.GPTNeoConfig.from_pretrained(str(tmp_path))
    assert (hf.hidden_size, hf.num_layers, hf.num_heads, hf.window_size) == (2048, 24, 16, 256)
    assert hf.attention_layers == list(cfg.attention_layers)
    assert GPTNeoConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_wrong_model_type_is_rejected():
    with pytest.raises(ValueError, match="model_type is 'gpt2'"):
        GPTNeoConfig.from_hf_dict({"model_type": "gpt2"})


def test_platform_option_switches_the_xla_cpu_workarounds_explicitly():
    import jax
    import jax.numpy as jnp
    import pytest

    from neojax.model import GPTNeo, init_params, preset
    with pytest.raises(ValueError, match="platform='cuda'"):
        preset("tiny", platform="cuda")
    tokens = jnp.zeros((1, 8), jnp.int32)

    def grad_jaxpr(platform):
        config = preset("tiny", platform=platform)
        params = init_params(config, jax.random.key(0))
        loss = lambda p: GPTNeo(config).apply({"params": p}, tokens).sum()
        return str(jax.make_jaxpr(jax.grad(loss))(params))
    # the materialised residual gradient (a conditional) is there on "cpu" only, whatever this machine is
    assert "cond" in grad_jaxpr("cpu") and "cond" not in grad_jaxpr("gpu")
    assert preset("tiny").to_hf_dict().get("platform") is None  # an execution choice, not the architecture
