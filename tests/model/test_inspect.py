"""Attention weights read from a model equal softmax(q.k) computed independently in float64."""
import jax
import numpy as np
import pytest

from neojax.model import GPTNeo, GPTNeoConfig, init_params
from neojax.model.inspect import attention_weights


@pytest.mark.slow
@pytest.mark.parametrize("layer,kind", [(0, "global"), (1, "local"), (2, "linear")])
def test_attention_weights_match_float64_definitions(layer, kind):
    cfg = GPTNeoConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, window_size=5, local_block_size=2,
                       attention_types=[[["global", "local", "linear"], 1]], initializer_range=0.5)
    params = init_params(cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 50, size=(1, 12))
    w = attention_weights(params, cfg, tokens, layer)
    assert w.shape == (1, 2, 12, 12)
    # q and k of the layer, independently: the module's own Dense kernels on the layer input.
    _, state = GPTNeo(cfg).apply({"params": params}, tokens, mutable=["intermediates"],
                                 capture_intermediates=lambda m, _: m.name == "ln_1")
    x = np.asarray(state["intermediates"][f"h_{layer}"]["ln_1"]["__call__"][0], np.float64)[0]
    p = params[f"h_{layer}"]["attn"]
    q, k = (np.einsum("te,ehd->htd", x, np.asarray(p[f"{n}_proj"]["kernel"], np.float64).reshape(16, 2, 8))
            for n in "qk")
    i, j = np.arange(12)[:, None], np.arange(12)[None, :]
    allowed = (j <= i) & ((j > i - 5) if kind == "local" else True)
    if kind == "linear":
        phi = lambda z: np.where(z > 0, z + 1, np.exp(np.minimum(z, 0)))
        ref = np.where(allowed, np.einsum("hqd,hkd->hqk", phi(q), phi(k)), 0.0)
    else:
        s = np.where(allowed, np.einsum("hqd,hkd->hqk", q, k), -np.inf)
        ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(w[0], ref, atol=1e-5)
