"""Shared GPT-Neo Pile recipe (not an experiment itself): the original training setup.

AdamW (beta2 0.95, eps 1e-8, weight decay 0.1 skipping LayerNorm and biases), linear warmup 3000
steps, cosine decay to 0.1x, clipping at 1.0, bfloat16 activations, z-loss 1e-4, documents
separated by <|endoftext|> and packed into 2048-token windows. Raise train.microbatches when a
global batch does not fit in memory.
"""
from neojax.train.config import base_config


def pile_config(preset: str, lr: float, global_batch: int, total_steps: int, decay_steps: int):
    c = base_config()
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.remat = "dots"
    c.data.source = "jsonl"
    c.data.source_args = dict(paths="~/data/pile/train/*.jsonl.zst", text_field="text")
    c.data.tokenizer = "~/models/gpt-neo-125M"  # any directory with GPT-2's tokenizer.json / vocab.json+merges.txt
    c.data.seq_len = 2048
    c.data.valid_fraction = 0.0005
    c.optimizer.update(schedule="cosine", lr=lr, warmup_steps=3000, decay_steps=decay_steps, final_lr_ratio=0.1,
                       b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0)
    c.train.update(total_steps=total_steps, global_batch=global_batch, microbatches=1, z_loss=1e-4, log_every=50)
    c.checkpoint.update(every_steps=1000, keep=3, keep_period=50_000)
    c.eval.update(every_steps=5000, valid_batches=32, hooks=["valid_loss", "samples"],
                  sample_prompts=["In a shocking finding, scientists", "def fibonacci(n):"])
    c.mesh = "data=1,fsdp=-1,tensor=1"
    return c
