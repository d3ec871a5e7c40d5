"""The FLOPs count behind MFU, against an independent count of weights and visible attention pairs."""
import jax
import numpy as np
import pytest

from neojax.flops import (
    attention_flops_per_token,
    datasheet_peak,
    full_causal_train_flops_per_token,
    matmul_params,
    train_flops_per_token,
)
from neojax.model import init_params, preset


def test_flops_count_matmul_weights_and_the_attention_the_layers_need():
    cfg = preset("tiny")  # global then local, window 32
    t = 128
    params = init_params(cfg, jax.random.key(0))
    # Every 2-D weight takes part in a matmul except the position table; wte is the tied head.
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    weights = sum(x.size for path, x in leaves if x.ndim == 2 and "wpe" not in jax.tree_util.keystr(path))
    assert matmul_params(cfg) == weights
    # Attention: 2 FLOPs per (query, key, feature) for q.k and again for p.v, over visible pairs.
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = {"global": (j <= i).sum(), "local": ((j <= i) & (j > i - cfg.window_size)).sum()}
    expected = sum(4 * visible[kind] * cfg.hidden_size for kind in cfg.attention_layers) / t
    np.testing.assert_allclose(attention_flops_per_token(cfg, t), expected, rtol=2 / t)  # the count drops diagonals
    assert train_flops_per_token(cfg, t) == pytest.approx(3 * (2 * weights + attention_flops_per_token(cfg, t)))


def test_the_full_causal_count_credits_no_window():
    cfg = preset("tiny")
    t = 128
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    causal = 4 * (j <= i).sum() * cfg.hidden_size * cfg.num_layers / t  # every layer sees every earlier position
    expected = 3 * (2 * matmul_params(cfg) + causal)
    np.testing.assert_allclose(full_causal_train_flops_per_token(cfg, t), expected, rtol=2 / t)
    assert full_causal_train_flops_per_token(cfg, t) > train_flops_per_token(cfg, t)
    assert full_causal_train_flops_per_token(cfg, 16) == pytest.approx(train_flops_per_token(cfg, 16))  # window >= T


@pytest.mark.parametrize("kind, flops", [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                         ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v5 lite", 197e12), ("cpu", None)])
def test_datasheet_peaks_by_device_kind(kind, flops):
    assert datasheet_peak(kind) == flops
