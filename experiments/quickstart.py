"""python -m neojax.train --config experiments/quickstart.py --workdir /tmp/neojax-quickstart

The embedded default: a small GPT-Neo (global + local layers) trained for about five minutes on
this machine's CPU on the Python standard library's own source (no download), with a
sentencepiece tokenizer trained on the same text. Variant `smoke` runs a few steps (CI).
"""
from neojax.train.config import base_config, lock


def get_config(variant: str = ""):
    c = base_config()
    c.model.preset = "tiny"
    c.model.overrides = dict(hidden_size=128, num_layers=4, num_heads=4, attention_types=[[["global", "local"], 2]],
                             window_size=64, max_position_embeddings=256)
    c.data.source = "stdlib"
    c.data.source_args = dict(max_bytes=6_000_000)
    c.data.train_sentencepiece = 2048
    c.data.seq_len = 256
    c.data.valid_fraction = 0.02
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01
    c.train.total_steps = 200
    c.train.global_batch = 16
    c.train.log_every = 20
    c.checkpoint.every_steps = 100
    c.eval.every_steps = 100
    c.eval.valid_batches = 16
    c.eval.hooks = ["valid_loss", "samples"]
    c.eval.sample_prompts = ["def ", "import os\n", "class "]
    c.eval.sample_max_new_tokens = 48
    if variant == "smoke":
        c.data.source_args = dict(max_bytes=300_000)
        c.data.train_sentencepiece = 512
        c.data.seq_len = 64
        c.train.total_steps = 6
        c.train.global_batch = 4
        c.train.log_every = 2
        c.checkpoint.every_steps = 3
        c.eval.every_steps = 3
        c.eval.valid_batches = 2
        c.eval.sample_max_new_tokens = 8
        c.train.report_mfu = False
    elif variant:
        raise ValueError(f"unknown quickstart variant {variant!r}; variants: '' (default), 'smoke'")
    return lock(c)
