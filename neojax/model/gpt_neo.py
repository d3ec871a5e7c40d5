"""GPT-Neo as a pure-functional Flax (linen) module.

    model = GPTNeo(config)
    logits = model.apply({"params": params}, tokens)                       # [batch, time, vocab]
    logits = model.apply({"params": params}, tokens, attention_mask=mask)  # left padding
    hidden = model.apply({"params": params}, tokens, method=GPTNeo.hidden) # [batch, time, embed]

Decoding enters through `GPTNeo.prefill` and `GPTNeo.decode` (driven by neojax.model.decode).
Every parameter declares logical axis names (vocab, embed, heads, mlp, ...); `neojax.sharding`
maps them to mesh axes. The model knows nothing of meshes, optimizers or files.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from neojax import registry
from neojax.model import attention as _attention  # noqa: F401  (registers global and local)
from neojax.model import backend, modes
from neojax.model import variants as _variants  # noqa: F401  (registers rotary, alibi, linear)
from neojax.model.config import GPTNeoConfig
from neojax.model.layers import (
    check_tokens,
    dense,
    init,
    layer_norm,
    position_ids_from_mask,
    position_ids_from_segments,
    qkv,
)

ACTIVATION_AXES = ("act_batch", "act_length", "act_embed")
_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class SelfAttention(nn.Module):
    config: GPTNeoConfig
    attention_type: str

    @nn.compact
    def __call__(self, x, key_mask, positions, mode: modes.Mode, cache=None):
        """Returns (output, this layer's cache): what `mode` says (see neojax.model.modes)."""
        cfg = self.config
        b, t, _ = x.shape
        q, k, v = (y.reshape(b, t, cfg.num_heads, cfg.head_dim) for y in qkv(self, cfg, x))
        variant = registry.get("attention", self.attention_type)
        if variant.qk is not None:  # rotary and other position-dependent query/key maps
            q, k = variant.qk(q, k, positions, cfg)
        if isinstance(mode, modes.Extend):
            y, cache = variant.extend(q, k, v, cache, mode.starts, cfg, mode.rows)
        elif isinstance(mode, modes.Decode):
            y, cache = variant.decode(q, k, v, cache, mode.slot, cfg)
        else:
            drop = nn.Dropout(cfg.attention_dropout)
            y = variant.attend(q, k, v, key_mask, cfg, lambda p: drop(p, deterministic=not mode.train),
                               positions=positions)
            if isinstance(mode, modes.Prefill):
                cache = variant.start_cache(k, v, key_mask, mode.length, cfg)
        y = dense(cfg, cfg.hidden_size, ("heads", "embed"), "out_proj")(y.reshape(b, t, cfg.hidden_size))
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=not mode.train), cache


class MLP(nn.Module):
    config: GPTNeoConfig

    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        h = dense(cfg, cfg.inner_size, ("embed", "mlp"), "c_fc")(x)
        h = jax.nn.gelu(h, approximate=cfg.activation_function == "gelu_new")
        std = cfg.initializer_range / math.sqrt(cfg.num_layers)  # the original code's scale_by_depth init
        y = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "c_proj", std=std)(h)
        return nn.Dropout(cfg.resid_dropout)(y, deterministic=deterministic)


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""
    config: GPTNeoConfig
    attention_type: str

    @nn.compact
    def __call__(self, x, key_mask, positions, mode: modes.Mode, cache=None):
        cfg = self.config
        if backend.xla_cpu_workarounds(cfg):
            x = backend.gradient_boundary(x)
        y, cache = SelfAttention(cfg, self.attention_type, name="attn")(
            layer_norm(cfg, "ln_1")(x), key_mask, positions, mode, cache)
        x = x + y
        x = x + MLP(cfg, name="mlp")(layer_norm(cfg, "ln_2")(x), deterministic=not mode.train)
        return nn.with_logical_constraint(x, ACTIVATION_AXES), cache


class GPTNeo(nn.Module):
    """GPT-Neo decoder: token + learned position embeddings, `num_layers` blocks (global or local
    attention by layer), a final LayerNorm and the output head tied to the token embedding."""
    config: GPTNeoConfig

    def setup(self):
        cfg = self.config
        self.wte = self.param("wte", init(cfg.initializer_range, ("vocab", "embed")),
                              (cfg.vocab_size, cfg.hidden_size), jnp.float32)
        self.wpe = self.param("wpe", init(cfg.initializer_range, ("position", "embed")),
                              (cfg.max_position_embeddings, cfg.hidden_size), jnp.float32)
        block = Block if cfg.remat == "none" else nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat])
        self.h = [block(cfg, kind) for kind in cfg.attention_layers]
        self.ln_f = layer_norm(cfg)
        self.embed_dropout = nn.Dropout(cfg.embed_dropout)

    def __call__(self, tokens, attention_mask=None, position_ids=None, deterministic: bool = True, segment_ids=None):
        """Logits [batch, time, vocab] in float32. `segment_ids` ([batch, time], 0 = padding) pack
        several examples in a row: tokens attend within their segment, positions restart per segment."""
        return self.head(self.hidden(tokens, attention_mask, position_ids, deterministic, segment_ids))

    def hidden(self, tokens, attention_mask=None, position_ids=None, deterministic: bool = True, segment_ids=None):
        """The final (layer-normed) hidden states [batch, time, embed], for heads other than the LM's."""
        if segment_ids is not None:
            unpacked = sorted({k for k in self.config.attention_layers if not registry.get("attention", k).packed})
            if unpacked:
                raise ValueError(f"attention {unpacked} cannot keep packed examples apart; train without packing "
                                 "(segment_ids) or use softmax attention variants")
            attention_mask = segment_ids
            position_ids = position_ids_from_segments(segment_ids) if position_ids is None else position_ids
        key_mask = None if attention_mask is None else (segment_ids if segment_ids is not None
                                                        else attention_mask.astype(bool))
        x, _ = self._blocks(tokens, key_mask, position_ids, attention_mask, modes.Full(train=not deterministic))
        return x

    def prefill(self, tokens, attention_mask, cache_length: int):
        """Run a left-padded prompt once. Returns (logits of its last slot [batch, vocab], the cache:
        one dict per layer, sized for `cache_length` slots)."""
        x, cache = self._blocks(tokens, attention_mask.astype(bool), None, attention_mask, modes.Prefill(cache_length))
        return self.head(x[:, -1]), cache

    def decode(self, tokens, position_ids, cache, slot):
        """One new token per row ([batch, 1]) at cache `slot`. Returns (logits [batch, vocab], cache)."""
        x, cache = self._blocks(tokens, None, position_ids, None, modes.Decode(slot), cache)
        return self.head(x[:, 0]), cache

    def extend(self, tokens, starts, cache, rows=None, last=None):
        """Serving: row b's tokens ([batch, C]) at its cache slots starts[b] .. starts[b]+C-1 (a prompt
        chunk, or C = 1 to decode), rows independent; `rows`: which rows of a cache of many these are
        (see extend_attention). Returns (logits [batch, C, vocab], cache), or with `last` ([batch])
        only each row's logits at its position last[b] ([batch, vocab])."""
        positions = jnp.minimum(starts[:, None] + jnp.arange(tokens.shape[1]), self.config.max_position_embeddings - 1)
        x, cache = self._blocks(tokens, None, positions, None, modes.Extend(starts, rows), cache)
        if last is not None:
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        return self.head(x), cache

    def head(self, x):
        """Logits of the tied head, in float32 whatever the compute dtype."""
        dtype = jnp.dtype(self.config.dtype)
        if "transposed" in self.variables:  # decoding on a CPU: see backend.rows_times (wte is [out, in])
            wte = self.get_variable("transposed", "wte") if self.has_variable("transposed", "wte") else self.wte
            logits = backend.rows_times(wte.astype(dtype), x)
        else:
            logits = jnp.einsum("...d,vd->...v", x, self.wte.astype(dtype), preferred_element_type=jnp.float32)
        if self.has_variable("params", "wte_scale"):  # int8 rows (neojax.model.quant)
            logits = logits * self.get_variable("params", "wte_scale")
        return logits

    def embed(self, tokens, positions):
        wte = jnp.take(self.wte, tokens, axis=0).astype(jnp.float32)
        if self.has_variable("params", "wte_scale"):
            wte = wte * jnp.take(self.get_variable("params", "wte_scale"), tokens, axis=0)[..., None]
        return (wte + jnp.take(self.wpe, positions, axis=0)).astype(self.config.dtype)

    def _blocks(self, tokens, key_mask, positions, attention_mask, mode: modes.Mode, cache=None):
        check_tokens(tokens, self.config, positions)
        if positions is None:
            positions = (position_ids_from_mask(attention_mask) if attention_mask is not None
                         else jnp.arange(tokens.shape[1])[None, :])
        x = nn.with_logical_constraint(self.embed_dropout(self.embed(tokens, positions), deterministic=not mode.train),
                                       ACTIVATION_AXES)
        caches = []
        for i, block in enumerate(self.h):
            x, layer_cache = block(x, key_mask, positions, mode, None if cache is None else cache[i])
            caches.append(layer_cache)
        return self.ln_f(x), caches


def init_params(config: GPTNeoConfig, rng, seq_len: int = 8):
    """Randomly initialised float32 params (plain arrays, logical-axis boxes removed)."""
    tokens = jnp.zeros((1, min(seq_len, config.max_position_embeddings)), jnp.int32)
    return jax.jit(lambda r: nn.meta.unbox(GPTNeo(config).init(r, tokens)["params"]))(rng)


def layer_variants(config: GPTNeoConfig) -> tuple:
    """The registered attention of each layer: with the config, the key of anything traced from them
    (a variant registered again under its name is another key)."""
    return tuple(registry.get("attention", name) for name in config.attention_layers)


def _abstract_params(config: GPTNeoConfig):
    """Boxed ShapeDtypeStructs of every parameter: no memory is allocated."""
    return _traced_params(config, layer_variants(config))


@functools.lru_cache(maxsize=32)
def _traced_params(config: GPTNeoConfig, variants: tuple):
    """One trace of the model's init per config and layer variants: setting up a run asks for the
    shapes many times."""
    init_ = lambda r: GPTNeo(config).init(r, jnp.zeros((1, 1), jnp.int32))["params"]
    return jax.eval_shape(init_, jax.random.key(0))


def param_shapes(config: GPTNeoConfig):
    """Pytree of jax.ShapeDtypeStruct for every parameter, from shapes only."""
    return nn.meta.unbox(_abstract_params(config))


def logical_axes(config: GPTNeoConfig):
    """Pytree of logical axis names (a PartitionSpec of names) for every parameter, from shapes only."""
    return nn.get_partition_spec(_abstract_params(config))
