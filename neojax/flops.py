"""FLOPs per token (the MaxText convention) and the measured matrix-multiply peak."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import neojax.model  # noqa: F401  (registers the attention variants)
from neojax import registry
from neojax.model.config import GPTNeoConfig


def matmul_params(config: GPTNeoConfig) -> int:
    """Parameters that take part in matmuls: blocks plus the (tied) unembedding; not wpe."""
    d, inner = config.hidden_size, config.inner_size
    per_layer = 4 * d * d + 2 * d * inner
    return config.num_layers * per_layer + config.vocab_size * d


def attention_flops_per_token(config: GPTNeoConfig, seq_len: int) -> float:
    """Forward attention FLOPs per token that the layers need: causal global 2*T*d, windowed
    4*(T*w - w^2/2)*d/T (scores and the weighted sum)."""
    d, t = config.hidden_size, seq_len
    total = 0.0
    for kind in config.attention_layers:
        w = registry.get("attention", kind).window(config)  # the variant's own window, not its name
        if w is None or w >= t:
            total += 2 * t * d
        else:
            total += 4 * (t * w - w * w / 2) * d / t
    return total


def train_flops_per_token(config: GPTNeoConfig, seq_len: int) -> float:
    """Training = 3 x forward; forward = 2 x matmul params + attention."""
    return 3 * (2 * matmul_params(config) + attention_flops_per_token(config, seq_len))


def full_causal_train_flops_per_token(config: GPTNeoConfig, seq_len: int) -> float:
    """The count a generic MaxText-style formula gives a GPT-Neo: every layer's attention causal over
    the whole T (2*T*d forward a token), local windows not credited. Stated beside ours, which counts
    what the windowed layers do; it is higher wherever a window is shorter than T."""
    attention = config.num_layers * 2 * seq_len * config.hidden_size
    return 3 * (2 * matmul_params(config) + attention)


# Dense bfloat16 matrix rates from the vendors' datasheets (SXM parts), by device kind: the
# denominator MaxText and most papers divide by, beside the peak this module measures.
DATASHEET_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12,
                        "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def datasheet_peak(device_kind: str) -> float | None:
    """The datasheet bfloat16 rate of a device kind such as 'NVIDIA H200', or None if unknown."""
    for name, flops in DATASHEET_BF16_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def measure_peak_flops(dtype=jnp.float32, size: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of square matmuls on the default device: the ceiling used for utilisation. Ten
    products are queued per wait so that dispatch latency does not count against the device. The
    operand is a constant (throughput does not depend on the values; drawing a random one costs more
    than the measurement on a CPU)."""
    a = jnp.full((size, size), 1 / size, dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        outs = [f(a) for _ in range(10)]
        jax.block_until_ready(outs)
        n += 10
    return 2 * size ** 3 * n * jax.local_device_count() / (time.perf_counter() - start)


def measure_bandwidth(megabytes: int = 256, seconds: float = 1.0) -> float:
    """Bytes/s at which the default device streams a weight matrix through a one-row product (a
    float32 [n, n] matrix of `megabytes`): what a batch-1 decode step does with every weight, so the
    bound of weight-bound decoding. (An elementwise pass is not it: XLA:CPU runs those on one core.)"""
    n = int((megabytes * 2 ** 20 // 4) ** 0.5)
    w = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    x = jnp.ones((1, n), jnp.float32)
    f = jax.jit(lambda x, w: x @ w)
    f(x, w).block_until_ready()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        jax.block_until_ready(f(x, w))
        runs += 1
    return w.nbytes * runs / (time.perf_counter() - start)
