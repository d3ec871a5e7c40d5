"""GPT-Neo model: config and presets, attention kernels, the Flax module."""
from neojax.model.config import PRESETS, GPTNeoConfig, expand_attention_types, preset
from neojax.model.gpt_neo import GPTNeo, init_params, logical_axes, param_shapes
from neojax.model.layers import check_tokens, position_ids_from_mask

__all__ = ["GPTNeoConfig", "PRESETS", "expand_attention_types", "preset", "GPTNeo", "check_tokens",
           "init_params", "logical_axes", "param_shapes", "position_ids_from_mask"]
