"""python -m neojax.train --config experiments/gpt_neo_1p3b_pile.py --workdir /mnt/runs/gpt_neo_1p3b_pile --config.data.source_args.paths='/data/pile/train/*.jsonl.zst' --config.data.tokenizer=/models/gpt-neo-125M

GPT-Neo 1.3B: peak lr 2e-4, 512 x 2048 tokens a step, cosine to 0.1x at 300k of 400k steps.
The original recipe: AdamW (beta2 0.95, eps 1e-8, weight decay 0.1 skipping LayerNorm and
biases), linear warmup 3000 steps, cosine decay to 0.1x, clipping at 1.0, bfloat16 activations,
z-loss 1e-4, documents separated by <|endoftext|> and packed into 2048-token windows. Raise
train.microbatches when a global batch does not fit in memory; shorten with --config.train.total_steps.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _pile import pile_config  # noqa: E402

from neojax.train.config import lock  # noqa: E402


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"gpt_neo_1p3b_pile has no variants (got {variant!r})")
    return lock(pile_config("gpt-neo-1.3B", lr=2e-4, global_batch=512, total_steps=400_000, decay_steps=300_000))
