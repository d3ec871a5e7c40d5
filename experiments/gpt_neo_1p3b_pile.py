"""python -m neojax.train --config experiments/gpt_neo_1p3b_pile.py --workdir /mnt/runs/gpt_neo_1p3b_pile --config.data.source_args.paths='/data/pile/train/*.jsonl.zst' --config.data.tokenizer=/models/gpt-neo-125M

GPT-Neo 1.3B: peak lr 2e-4, 512 x 2048 tokens a step, cosine to 0.1x at 300k of 400k steps.
The original recipe (experiments/_pile.py); shorten with --config.train.total_steps=N.
"""
from neojax.train.config import import_experiment, lock

pile_config = import_experiment("_pile").pile_config


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"gpt_neo_1p3b_pile has no variants (got {variant!r})")
    return lock(pile_config("gpt-neo-1.3B", lr=2e-4, global_batch=512, total_steps=400_000, decay_steps=300_000))
