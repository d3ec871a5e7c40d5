"""Property checks that every registered attention variant must pass.

The test suite runs them for each name in `registry.names("attention")`, so a new variant is
tested by registering it; notebooks call `check_variant(name)` on a variant defined in a cell.
Each check builds a tiny model whose layers all use the variant, raises AssertionError naming
what broke, and returns the measured figure.

    from neojax.testing import check_variant
    check_variant("rotary")   # {'shapes': ..., 'causality': 0.0, 'window': ..., 'decoding': 3e-7, 'sharding': 2e-7}
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neojax import registry, sharding
from neojax.infer.cache import can_grow, grow_cache
from neojax.infer.programs import decode_step, prefill
from neojax.infer.weights import transposed_kernels
from neojax.model.config import GPTNeoConfig
from neojax.model.gpt_neo import GPTNeo, init_params

SEQ = 24  # > window and several blocks of each blocked kernel


def variant_config(name: str, num_layers: int = 2, **overrides) -> GPTNeoConfig:
    """A tiny model whose every layer is `name`, with windows and blocks small enough that SEQ
    crosses them. Large init so that any leak between positions shows in the logits."""
    registry.get("attention", name)  # unknown names list the registry
    return GPTNeoConfig(**{**dict(vocab_size=64, hidden_size=32, num_layers=num_layers, num_heads=4,
                                  attention_types=[[[name], num_layers]], window_size=8, local_block_size=4,
                                  global_block_size=8, max_position_embeddings=64, initializer_range=0.3),
                           **overrides})


@functools.lru_cache(maxsize=32)
def _params(config, seed):
    return init_params(config, jax.random.key(seed))


def _setup(config, seed=0, batch=2):
    params = _params(config.replace(dtype="float32"), seed)  # params are float32 whatever the compute dtype
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, SEQ))
    return params, tokens, jax.jit(GPTNeo(config).apply)


def check_shapes(name: str) -> str:
    """attend keeps [batch, time, heads, head_dim] and the compute dtype (with and without a
    padding mask); the model's logits are float32 [batch, time, vocab] in float32 and bfloat16."""
    attend = jax.jit(registry.get("attention", name).attend, static_argnums=4)
    for dtype in (jnp.float32, jnp.bfloat16):
        config = variant_config(name, dtype=jnp.dtype(dtype).name)
        q, k, v = (jax.random.normal(key, (2, SEQ, config.num_heads, config.head_dim), dtype)
                   for key in jax.random.split(jax.random.key(1), 3))
        positions = jnp.broadcast_to(jnp.arange(SEQ), (2, SEQ))
        for key_mask in (None, jnp.arange(SEQ)[None, :] >= jnp.array([[0], [5]])):
            out = attend(q, k, v, key_mask, config, positions=positions)
            assert out.shape == q.shape, f"{name}: attend returned shape {out.shape}, expected {q.shape}"
            assert out.dtype == q.dtype, f"{name}: attend returned {out.dtype} for {jnp.dtype(dtype).name} inputs"
            assert bool(jnp.isfinite(out.astype(jnp.float32)).all()), f"{name}: attend returned non-finite values"
        params, tokens, apply = _setup(config)
        logits = apply({"params": params}, tokens)
        assert logits.shape == (2, SEQ, config.vocab_size) and logits.dtype == jnp.float32, \
            f"{name}: logits {logits.shape} {logits.dtype} in {jnp.dtype(dtype).name}"
    return "ok"


def check_causality(name: str) -> float:
    """Changing the tokens after position t never changes the logits at or before t."""
    config = variant_config(name)
    params, tokens, apply = _setup(config)
    base = np.asarray(apply({"params": params}, tokens))
    rng, worst = np.random.default_rng(1), 0.0
    for t in (0, 5, 11, SEQ - 2):
        changed = tokens.copy()
        shift = 1 + rng.integers(0, config.vocab_size - 1, size=changed[:, t + 1:].shape)
        changed[:, t + 1:] = (tokens[:, t + 1:] + shift) % config.vocab_size
        out = np.asarray(apply({"params": params}, changed))
        leak = float(np.abs(out[:, :t + 1] - base[:, :t + 1]).max())
        assert leak <= 1e-5, \
            f"{name} is not causal: changing tokens after {t} moved logits at or before {t} by {leak:.3g}"
        assert np.abs(out[:, t + 1:] - base[:,
                                            t + 1:]).max() > 1e-4, "the changed tokens changed nothing: check is blind"
        worst = max(worst, leak)
    return worst


def check_window(name: str) -> int | None:
    """A one-layer model sees exactly the window the variant claims: a token at s reaches the
    outputs at s .. s + W - 1 and none after; with no window (None) it reaches the last position."""
    config = variant_config(name, num_layers=1)
    window = registry.get("attention", name).window(config)
    params, tokens, apply = _setup(config)
    base = np.asarray(apply({"params": params}, tokens))
    s = 2
    changed = tokens.copy()
    changed[:, s] = (tokens[:, s] + 1) % config.vocab_size
    delta = np.abs(np.asarray(apply({"params": params}, changed)) - base).max(axis=(0, 2))  # per position
    if window is None:
        assert delta[SEQ - 1] > 1e-6, f"{name} claims no window, but position {SEQ - 1} does not see token {s}"
    else:
        assert window + s < SEQ, "the check needs a sequence longer than the window"
        assert delta[s + window - 1] > 1e-6, \
            f"{name} claims window {window}, but position {s + window - 1} does not see token {s}"
        outside = float(delta[s + window:].max())
        assert outside <= 1e-6, f"{name} claims window {window}, but token {s} reaches past it (change {outside:.3g})"
    return window


def check_decoding(name: str, prompt: int = 6) -> float:
    """Prefill + one-token decode steps (across the window) give the full forward's logits,
    with one row left padded; the steps use the [out, in] weight copies generate uses on CPUs,
    and the cache starts 1 slot past the prompt (a windowed layer: short of its ring) and is
    grown (grow_cache) as generate does."""
    config = variant_config(name)
    params, tokens, apply = _setup(config)
    mask = np.ones_like(tokens)
    mask[0, :3] = 0
    tokens[0, :3] = 0
    full = np.asarray(apply({"params": params}, tokens, attention_mask=mask))
    logits, cache, position = jax.jit(prefill, static_argnums=(1, 4))(params, config, tokens[:, :prompt],
                                                                       mask[:, :prompt], prompt + 1)
    step = jax.jit(decode_step, static_argnums=1)
    weights_t = transposed_kernels(params)
    worst = float(np.abs(np.asarray(logits) - full[:, prompt - 1]).max())
    for slot in range(prompt, SEQ):
        if slot == prompt + 1 and can_grow(config):  # as generate's phases do
            cache = grow_cache(cache, config, SEQ)
        position = position + 1
        logits, cache = step(params, config, cache, jnp.asarray(tokens[:, slot]), position, slot, weights_t)
        worst = max(worst, float(np.abs(np.asarray(logits) - full[:, slot]).max()))
    assert worst < 1e-4, f"{name}: cached decoding differs from the full forward by {worst:.3g}"
    return worst


def check_sharding(name: str) -> float | str:
    """Logits and gradients of a model sharded over the devices present (heads split over `tensor`,
    the batch over `data`) equal the single-device ones. The test suite runs it on 8 (virtual)
    devices; with one device there is nothing to compare."""
    if jax.device_count() == 1:
        return "skipped: one device (the test suite checks on 8)"
    config = variant_config(name)
    params, tokens, apply = _setup(config, batch=4)
    n = jax.device_count()
    tensor = math.gcd(n, config.num_heads)
    mesh = sharding.make_mesh({"data": math.gcd(n // tensor, tokens.shape[0]), "fsdp": 1, "tensor": tensor},
                              jax.devices()[:math.gcd(n // tensor, tokens.shape[0]) * tensor])

    def loss(p, t):
        with nn.logical_axis_rules(sharding.DEFAULT_RULES):
            logits = GPTNeo(config).apply({"params": p}, t)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, t[..., None], -1)[..., 0])

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss))(params, tokens)
    param_sh = sharding.shardings(mesh, sharding.param_specs(config, sharding.DEFAULT_RULES, mesh))
    batch_sh = jax.sharding.NamedSharding(mesh, sharding.batch_spec())
    with jax.set_mesh(mesh):
        out_loss, grads = jax.jit(jax.value_and_grad(loss), in_shardings=(param_sh, batch_sh))(
            jax.device_put(params, param_sh), jax.device_put(tokens, batch_sh))
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
    worst = max(worst, abs(float(out_loss) - float(ref_loss)))
    assert worst < 1e-4, f"{name}: sharded over mesh {dict(mesh.shape)} differs from one device by {worst:.3g}"
    return worst


CHECKS = {"shapes": check_shapes, "causality": check_causality, "window": check_window,
          "decoding": check_decoding, "sharding": check_sharding}


def check_variant(name: str) -> dict:
    """Run every property check on the registered variant `name`; returns {check: figure}."""
    return {check: fn(name) for check, fn in CHECKS.items()}
