"""GPT-Neo as a pure-functional Flax (linen) module.

    model = GPTNeo(config)
    logits = model.apply({"params": params}, tokens)             # [batch, time, vocab], float32
    logits = model.apply({"params": params}, tokens, attention_mask=mask)   # left padding

Every parameter declares logical axis names (vocab, embed, heads, mlp, ...); `neojax.sharding`
maps them to mesh axes. The model knows nothing of meshes, optimizers or files.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neojax import registry
from neojax.model import attention as _attention  # noqa: F401  (registers global and local)
from neojax.model import backend
from neojax.model import variants as _variants  # noqa: F401  (registers rotary, alibi, linear)
from neojax.model.config import GPTNeoConfig

ACTIVATION_AXES = ("act_batch", "act_length", "act_embed")
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _init(std, axes):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class Dense(nn.Dense):
    """nn.Dense that multiplies by an [out, in] copy of its kernel when the "transposed"
    collection holds one (decode steps; see neojax.model.decode.transposed_kernels)."""

    @nn.compact
    def __call__(self, x):
        if not self.has_variable("transposed", "kernel"):
            return super().__call__(x)
        y = backend.rows_times(self.get_variable("transposed", "kernel").astype(self.dtype), x.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return y.astype(self.dtype)


def _dense(config, features, axes, name, use_bias=True, std=None):
    return Dense(
        features, use_bias=use_bias, name=name, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
        kernel_init=_init(config.initializer_range if std is None else std, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def _layer_norm(config, name):
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
        use_fast_variance=False, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class SelfAttention(nn.Module):
    config: GPTNeoConfig
    attention_type: str
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, key_mask, positions, cache=None, slot=None, cache_length=None):
        """Returns (output, layer cache). Three modes: plain forward (no cache); prefill
        (`cache_length` given: attend over x, return a cache sized for that many slots); decode
        (`cache` and `slot` given: x is one new token at that slot)."""
        cfg = self.config
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, cfg.num_heads, cfg.head_dim)
        if self.has_variable("transposed", "qkv"):  # decoding on a CPU: one product for q, k and v
            qkv = backend.rows_times(self.get_variable("transposed", "qkv").astype(x.dtype), x)
            q, k, v = map(split, jnp.split(qkv, 3, -1))
        else:
            q, k, v = (split(_dense(cfg, cfg.hidden_size, ("embed", "heads"), f"{n}_proj", use_bias=False)(x))
                       for n in "qkv")
        drop = nn.Dropout(cfg.attention_dropout)
        variant = registry.get("attention", self.attention_type)
        if variant.qk is not None:
            q, k = variant.qk(q, k, positions, cfg)
        if cache is not None:
            y, cache = variant.decode(q, k, v, cache, slot, cfg)
        else:
            y = variant.attend(q, k, v, key_mask, cfg, lambda p: drop(p, deterministic=self.deterministic),
                               positions=positions)
            if cache_length is not None:
                cache = variant.start_cache(k, v, key_mask, cache_length, cfg)
        y = _dense(cfg, cfg.hidden_size, ("heads", "embed"), "out_proj")(y.reshape(b, t, cfg.hidden_size))
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=self.deterministic), cache


class MLP(nn.Module):
    config: GPTNeoConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = _dense(cfg, cfg.inner_size, ("embed", "mlp"), "c_fc")(x)
        h = jax.nn.gelu(h, approximate=cfg.activation_function == "gelu_new")
        # scale_by_depth init of the original code (training from scratch only).
        std = cfg.initializer_range / math.sqrt(cfg.num_layers)
        y = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "c_proj", std=std)(h)
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=self.deterministic)


class Block(nn.Module):
    config: GPTNeoConfig
    attention_type: str
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, key_mask, positions, cache=None, slot=None, cache_length=None):
        cfg = self.config
        if backend.xla_cpu_workarounds(cfg):
            x = backend.gradient_boundary(x)
        y, cache = SelfAttention(cfg, self.attention_type, self.deterministic, name="attn")(
            _layer_norm(cfg, "ln_1")(x), key_mask, positions, cache, slot, cache_length)
        x = x + y
        x = x + MLP(cfg, self.deterministic, name="mlp")(_layer_norm(cfg, "ln_2")(x))
        return nn.with_logical_constraint(x, ACTIVATION_AXES), cache


def position_ids_from_segments(segment_ids):
    """Positions restarting at 0 where each packed segment begins."""
    t = segment_ids.shape[-1]
    starts = jnp.concatenate([jnp.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[...,
                                                                                                             :-1]], -1)
    first = jax.lax.cummax(jnp.where(starts, jnp.arange(t), 0), axis=segment_ids.ndim - 1)
    return (jnp.arange(t) - first).astype(jnp.int32)


def position_ids_from_mask(attention_mask):
    """Positions with left padding: cumsum(mask) - 1; pads get the harmless position 1."""
    positions = jnp.cumsum(attention_mask, axis=-1) - 1
    return jnp.where(attention_mask > 0, positions, 1).astype(jnp.int32)


def check_tokens(tokens, config: GPTNeoConfig, positions=None):
    """Raise a clear ValueError for token batches the model cannot take (host-side check)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if tokens.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {tokens.shape[1]} exceeds max_position_embeddings={config.max_position_embeddings}; "
            "truncate the input (keep the last tokens) or use a config with more positions")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= config.vocab_size)]
        raise ValueError(f"token ids {sorted(set(bad.tolist()))[:5]} are outside the vocabulary "
                         f"[0, {config.vocab_size}); "
                         "was the text encoded with a different tokenizer?")
    if positions is not None:
        positions = np.asarray(positions)
        if positions.size and (positions.min() < 0 or positions.max() >= config.max_position_embeddings):
            raise ValueError(f"position ids must lie in [0, {config.max_position_embeddings})")


class GPTNeo(nn.Module):
    """GPT-Neo decoder with the output head tied to the token embedding.

    `model.apply(v, tokens)` returns logits. For generation (see neojax.model.decode):
    `cache_length=S` (prefill: logits of the last position only) or `cache=..., slot=t` (one
    decode step) return (logits, cache),
    the cache a list with one {k, v, valid} dict per layer. `return_hidden=True` returns the
    final (layer-normed) hidden states instead of logits."""
    config: GPTNeoConfig

    @nn.compact
    def __call__(self, tokens, attention_mask=None, position_ids=None, deterministic: bool = True,
                 cache=None, slot=None, cache_length=None, return_hidden: bool = False, segment_ids=None):
        """segment_ids ([batch, time] int, 0 = padding) pack several examples in a row: each token
        attends only within its segment and positions restart per segment."""
        cfg = self.config
        if segment_ids is not None:
            unpacked = sorted({k for k in cfg.attention_layers if not registry.get("attention", k).packed})
            if unpacked:
                raise ValueError(f"attention {unpacked} cannot keep packed examples apart; train without packing "
                                 "(segment_ids) or use softmax attention variants")
            attention_mask = segment_ids
            if position_ids is None:
                position_ids = position_ids_from_segments(segment_ids)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
        if tokens.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_position_embeddings="
                             f"{cfg.max_position_embeddings}; truncate the input")
        if position_ids is None:
            position_ids = (position_ids_from_mask(attention_mask) if attention_mask is not None
                            else jnp.arange(tokens.shape[1])[None, :])
        if not isinstance(tokens, jax.core.Tracer):  # eager call: validate values, not only shapes
            check_tokens(tokens, cfg, None if isinstance(position_ids, jax.core.Tracer) else position_ids)
        key_mask = None if attention_mask is None else (segment_ids if segment_ids is not None
                                                        else attention_mask.astype(bool))

        wte = self.param("wte", _init(cfg.initializer_range, ("vocab", "embed")),
                         (cfg.vocab_size, cfg.hidden_size), jnp.float32)
        wpe = self.param("wpe", _init(cfg.initializer_range, ("position", "embed")),
                         (cfg.max_position_embeddings, cfg.hidden_size), jnp.float32)
        dtype = jnp.dtype(cfg.dtype)
        x = (jnp.take(wte, tokens, axis=0) + jnp.take(wpe, position_ids, axis=0)).astype(dtype)
        x = nn.Dropout(cfg.embed_dropout)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)

        decoding = cache is not None or cache_length is not None
        block = Block if cfg.remat == "none" or decoding else nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat])
        new_cache = []
        for i, kind in enumerate(cfg.attention_layers):
            x, layer_cache = block(cfg, kind, deterministic, name=f"h_{i}")(
                x, key_mask, position_ids, None if cache is None else cache[i], slot, cache_length)
            new_cache.append(layer_cache)
        x = _layer_norm(cfg, "ln_f")(x)
        if return_hidden:  # final hidden states [batch, time, embed], for heads other than the LM's
            return x
        if cache_length is not None:  # prefill: only the next token's logits are needed
            x = x[:, -1:]
        # Tied head; logits (and so the loss) in float32 whatever the compute dtype.
        if "transposed" in self.variables:  # decoding: see backend.rows_times (wte is [out, in])
            head = self.get_variable("transposed", "wte") if self.has_variable("transposed", "wte") else wte
            logits = backend.rows_times(head.astype(dtype), x)
        else:
            logits = jnp.einsum("btd,vd->btv", x, wte.astype(dtype), preferred_element_type=jnp.float32)
        return (logits, new_cache) if decoding else logits


def init_params(config: GPTNeoConfig, rng, seq_len: int = 8):
    """Randomly initialised float32 params (plain arrays, logical-axis boxes removed)."""
    tokens = jnp.zeros((1, min(seq_len, config.max_position_embeddings)), jnp.int32)
    return jax.jit(lambda r: nn.meta.unbox(GPTNeo(config).init(r, tokens)["params"]))(rng)


def _abstract_params(config: GPTNeoConfig):
    """Boxed ShapeDtypeStructs of every parameter: no memory is allocated."""
    init = lambda r: GPTNeo(config).init(r, jnp.zeros((1, 1), jnp.int32))["params"]
    return jax.eval_shape(init, jax.random.key(0))


def param_shapes(config: GPTNeoConfig):
    """Pytree of jax.ShapeDtypeStruct for every parameter, from shapes only."""
    return nn.meta.unbox(_abstract_params(config))


def logical_axes(config: GPTNeoConfig):
    """Pytree of logical axis names (a PartitionSpec of names) for every parameter, from shapes only."""
    return nn.get_partition_spec(_abstract_params(config))
