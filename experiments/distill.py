"""python -m neojax.train --config experiments/distill.py --workdir /tmp/neojax-distill --config.distill.teacher=/models/gpt-neo-1.3B --config.data.tokenizer=/models/gpt-neo-1.3B --config.data.source_args.paths='my_data/*.jsonl'

Knowledge distillation: a 6-layer GPT-Neo student (125M width) trained from scratch on the
teacher's softened predictions (KL at temperature 2, weight 0.5) mixed with the usual LM loss. The
teacher is any checkpoint (HF / neojax / workdir) with the same tokenizer; its params are a frozen
argument of the train step, sharded by the same rules.
"""
from neojax.train.config import base_config, lock


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"distill has no variants (got {variant!r})")
    c = base_config()
    c.objective = "distill"
    c.model.preset = "gpt-neo-125M"
    c.model.overrides = dict(num_layers=6, attention_types=[[["global", "local"], 3]])
    c.distill.update(teacher="/models/gpt-neo-1.3B", temperature=2.0, alpha=0.5)
    c.data.tokenizer = "/models/gpt-neo-1.3B"
    c.data.source = "jsonl"
    c.data.source_args = dict(paths="my_data/*.jsonl", text_field="text")
    c.data.seq_len = 1024
    c.optimizer.update(lr=6e-4, warmup_steps=500, weight_decay=0.1)
    c.train.update(total_steps=20_000, global_batch=32, log_every=20)
    c.checkpoint.update(every_steps=1000, keep=3)
    c.eval.update(every_steps=1000, valid_batches=16)
    c.mesh = "data=1,fsdp=-1,tensor=1"
    return lock(c)
