"""python -m neojax.train --config experiments/gpt_neo_125m_pile.py --workdir /mnt/runs/gpt_neo_125m_pile --config.data.source_args.paths='/data/pile/train/*.jsonl.zst' --config.data.tokenizer=/models/gpt-neo-125M

GPT-Neo 125M: GPT-3 small learning rate 6e-4, 256 x 2048 tokens a step, 300B tokens.
The original recipe (experiments/_pile.py); shorten with --config.train.total_steps=N.
"""
from neojax.train.config import import_experiment, lock

pile_config = import_experiment("_pile").pile_config


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"gpt_neo_125m_pile has no variants (got {variant!r})")
    return lock(pile_config("gpt-neo-125M", lr=6e-4, global_batch=256, total_steps=572_000, decay_steps=572_000))
