"""python -m neojax.train --config experiments/gpt_neo_125m_pile.py --workdir /mnt/runs/gpt_neo_125m_pile --config.data.source_args.paths='/data/pile/train/*.jsonl.zst' --config.data.tokenizer=/models/gpt-neo-125M

GPT-Neo 125M: GPT-3 small learning rate 6e-4, 256 x 2048 tokens a step, 300B tokens.
The original recipe (experiments/_pile.py); shorten with --config.train.total_steps=N.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _pile import pile_config  # noqa: E402

from neojax.train.config import lock  # noqa: E402


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"gpt_neo_125m_pile has no variants (got {variant!r})")
    return lock(pile_config("gpt-neo-125M", lr=6e-4, global_batch=256, total_steps=572_000, decay_steps=572_000))
