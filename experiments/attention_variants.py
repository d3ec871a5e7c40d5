"""python -m neojax.train --config experiments/attention_variants.py:rotary --workdir /tmp/neojax-attn-rotary

The quickstart model and data (about four minutes on a 2-core CPU) with its global layers
replaced by a registered attention variant, local layers kept: `global` (GPT-Neo itself), `rotary`,
`alibi`, `linear` or any name you registered. Add `,smoke` for a few-step run (CI):
`--config experiments/attention_variants.py:alibi,smoke`. notebooks/attention_variants.ipynb
trains several and plots their validation losses side by side.
"""
import neojax.model  # noqa: F401  (registers the shipped variants)
from neojax import registry
from neojax.train.config import load_experiment


def get_config(variant: str = "global"):
    attention, _, size = variant.partition(",")
    if attention not in registry.names("attention"):
        raise ValueError(f"unknown attention variant {attention!r}; registered: {registry.names('attention')} "
                         "(use NAME or NAME,smoke)")
    c = load_experiment(f"quickstart:{size}")
    with c.unlocked():
        c.model.overrides.attention_types = [[[attention, "local"], c.model.overrides.num_layers // 2]]
        c.eval.hooks = ["valid_loss"]
        c.eval.every_steps = c.checkpoint.every_steps // 2 or 1
    return c
