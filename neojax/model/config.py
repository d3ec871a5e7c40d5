"""GPT-Neo model configuration: a frozen, typed dataclass plus the released presets."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence

from neojax import paths
from neojax.model.backend import PLATFORMS

DTYPES = ("float32", "bfloat16")  # compute dtypes (params stay float32)
REMATS = ("none", "full", "dots")  # rematerialisation of each block
ATTENTION_TYPES_HELP = 'attention_types looks like [[["global", "local"], 6]]: a list of [pattern, repeats] pairs'


def expand_attention_types(attention_types: Sequence, num_layers: int) -> tuple[str, ...]:
    """[[["global", "local"], 2]] -> ("global", "local", "global", "local"), checked against num_layers."""
    layers: list[str] = []
    try:
        for pattern, repeats in attention_types:
            if isinstance(pattern, str) or not all(isinstance(p, str) for p in pattern):
                raise TypeError
            layers.extend(list(pattern) * int(repeats))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot read attention_types={attention_types!r}: {ATTENTION_TYPES_HELP}") from e
    if len(layers) != num_layers:
        raise ValueError(
            f"attention_types={attention_types!r} expands to {len(layers)} layers but num_layers={num_layers}; "
            f"make the repeats add up to num_layers ({ATTENTION_TYPES_HELP})")
    return tuple(layers)


def is_int(v) -> bool:
    """An integer, not a boolean (JSON and configs carry true as 1 otherwise)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float, not a boolean."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _need(name: str, value, ok, what: str) -> None:
    if not ok(value):
        raise ValueError(f"{name}={value!r} must be {what}")


def _freeze_attention_types(attention_types: Sequence) -> tuple:
    return tuple((tuple(pattern), int(repeats)) for pattern, repeats in attention_types)


# The fields a checkpoint's weights fix (the rest are execution and training choices).
ARCHITECTURE = ("vocab_size", "hidden_size", "num_layers", "num_heads", "attention_types", "window_size",
                "max_position_embeddings", "intermediate_size", "layer_norm_epsilon", "activation_function")


@dataclasses.dataclass(frozen=True)
class GPTNeoConfig:
    """Hyper-parameters of a GPT-Neo decoder. Field names follow Hugging Face's `config.json`."""
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    attention_types: tuple = ((("global", "local"), 6),)
    window_size: int = 256
    max_position_embeddings: int = 2048
    intermediate_size: Optional[int] = None  # None means 4 * hidden_size
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    embed_dropout: float = 0.0
    attention_dropout: float = 0.0
    resid_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    # Execution choices (not part of the published architecture).
    dtype: str = "float32"  # activation / matmul dtype; params are always float32
    remat: str = "none"  # rematerialisation of each block: none | full | dots
    local_block_size: int = 128  # query block of the O(T x window) local attention
    global_block_size: int = 256  # query block of causal global attention (skips masked blocks); 0: dense
    platform: str = "auto"  # backend-specific kernels: auto (jax.default_backend()) | cpu | gpu | tpu
    kv_cache: str = "auto"  # decoding caches: auto (the compute dtype) | int8 (per head and position scales)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "window_size", "max_position_embeddings"):
            _need(name, getattr(self, name), lambda v: is_int(v) and v > 0, "a positive integer")
        _need("intermediate_size", self.intermediate_size, lambda v: v is None or (is_int(v) and v > 0),
              "a positive integer or null")
        for name in ("local_block_size", "global_block_size", "bos_token_id", "eos_token_id"):
            _need(name, getattr(self, name), lambda v: is_int(v) and v >= 0, "an integer >= 0")
        _need("layer_norm_epsilon", self.layer_norm_epsilon, lambda v: is_number(v) and v > 0, "a number > 0")
        for name in ("embed_dropout", "attention_dropout", "resid_dropout", "initializer_range"):
            _need(name, getattr(self, name), lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        expand_attention_types(self.attention_types, self.num_layers)
        object.__setattr__(self, "attention_types", _freeze_attention_types(self.attention_types))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.activation_function not in ("gelu_new", "gelu"):
            raise ValueError(f"activation_function={self.activation_function!r}: GPT-Neo uses 'gelu_new' (or 'gelu')")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose 'float32' or 'bfloat16'")
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform={self.platform!r}: choose 'auto', 'cpu', 'gpu' or 'tpu'")
        if self.kv_cache not in ("auto", "int8"):
            raise ValueError(f"kv_cache={self.kv_cache!r}: choose 'auto' or 'int8'")
        if self.remat not in REMATS:
            raise ValueError(f"remat={self.remat!r}: choose 'none', 'full' or 'dots'")

    @property
    def attention_layers(self) -> tuple[str, ...]:
        return expand_attention_types(self.attention_types, self.num_layers)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def inner_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    def replace(self, **changes) -> "GPTNeoConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; valid fields: {field_names()}")
        return dataclasses.replace(self, **changes)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attention_types"] = [[list(p), n] for p, n in self.attention_types]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTNeoConfig":
        unknown = set(d) - set(field_names())
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; valid fields: {field_names()}")
        return cls(**d)

    EXECUTION_FIELDS = ("dtype", "remat", "local_block_size", "global_block_size", "platform", "kv_cache")

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` that transformers' GPTNeoForCausalLM reads."""
        foreign = sorted(set(self.attention_layers) - {"global", "local"})
        if foreign:
            raise ValueError(f"attention types {foreign} have no transformers GPT-Neo equivalent (it runs only "
                             "'global' and 'local' layers); save a neojax checkpoint instead")
        d = self.to_dict()
        for k in self.EXECUTION_FIELDS:
            d.pop(k)
        d.update(model_type="gpt_neo", architectures=["GPTNeoForCausalLM"], tie_word_embeddings=True,
                 use_cache=True, summary_type="cls_index", summary_use_proj=True,
                 summary_activation=None, summary_proj_to_labels=True, summary_first_dropout=0.1)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "GPTNeoConfig":
        if d.get("model_type") != "gpt_neo":
            raise ValueError(f"model_type is {d.get('model_type')!r}, expected 'gpt_neo': this is not a GPT-Neo "
                             "config.json")
        if not d.get("tie_word_embeddings", True):
            raise ValueError("tie_word_embeddings=false is not GPT-Neo: neojax ties the output head to wte")
        keep = set(field_names()) - set(cls.EXECUTION_FIELDS)
        kwargs = {k: d[k] for k in keep if k in d and (d[k] is not None or k == "intermediate_size")}
        return cls(**kwargs, **overrides)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(GPTNeoConfig)]


def _gpt3_shape(d, layers, heads):
    return dict(hidden_size=d, num_layers=layers, num_heads=heads,
                attention_types=[[["global", "local"], layers // 2]])


PRESETS: dict[str, dict[str, Any]] = {
    "gpt-neo-125M": _gpt3_shape(768, 12, 12),
    "gpt-neo-350M": _gpt3_shape(1024, 24, 16),  # withdrawn checkpoint; GPT-3 "medium" shape
    "gpt-neo-1.3B": _gpt3_shape(2048, 24, 16),
    "gpt-neo-2.7B": _gpt3_shape(2560, 32, 20),
    # Small shapes for tests, notebooks and the CPU quickstart.
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                 attention_types=[[["global", "local"], 1]], window_size=32, max_position_embeddings=256),
    "small": dict(hidden_size=256, num_layers=4, num_heads=8,
                  attention_types=[[["global", "local"], 2]], window_size=128, max_position_embeddings=512),
}


def preset(name: str, **overrides) -> GPTNeoConfig:
    """A released (or test) shape by name, e.g. preset("gpt-neo-1.3B", dtype="bfloat16")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return GPTNeoConfig(**{**PRESETS[name], **overrides})


def model_shape(name_or_path: str) -> GPTNeoConfig:
    """A preset's config, or the config a checkpoint directory states (Hugging Face config.json, a
    neojax directory's or a training workdir's neojax.json) without reading weights: what planning
    and benchmarking need."""
    if name_or_path in PRESETS:
        return preset(name_or_path)
    root = paths.path(name_or_path)
    for card in (root / "neojax.json", root / "model" / "neojax.json"):
        if card.exists():
            return GPTNeoConfig.from_dict(json.loads(card.read_text())["model"])
    if (root / "config.json").exists():
        return GPTNeoConfig.from_hf_dict(json.loads((root / "config.json").read_text()))
    raise ValueError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory "
                     "(Hugging Face config.json, neojax.json) or training workdir")
