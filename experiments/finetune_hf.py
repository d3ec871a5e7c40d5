"""python -m neojax.train --config experiments/finetune_hf.py --workdir /tmp/neojax-finetune --config.model.init_from=/models/gpt-neo-125M --config.data.source_args.paths='my_texts/*.txt'

Domain adaptation: fine-tune a Hugging Face GPT-Neo directory on your own text files (one
document per file; variant `jsonl` reads {"text": ...} lines instead), then export it back:
    python -m neojax.convert /tmp/neojax-finetune /tmp/neojax-finetune/hf --to hf
Variant `lora` (or `jsonl,lora`) trains rank-8 LoRA adapters on the attention q/v projections
instead of every weight: the base stays frozen with no optimizer state, WORKDIR/adapters holds the
adapters alone, and the export above merges them.
"""
from neojax.train.config import base_config, lock


def get_config(variant: str = ""):
    c = base_config()
    c.model.preset = ""
    c.model.init_from = "/models/gpt-neo-125M"
    c.data.source = "text_files"
    c.data.source_args = dict(paths="my_texts/*.txt", split="file")
    options = set(filter(None, variant.split(",")))
    if options - {"jsonl", "lora"}:
        raise ValueError(f"unknown finetune_hf variant {variant!r}; variants: '' (text files), 'jsonl', 'lora', "
                         "'jsonl,lora'")
    if "jsonl" in options:
        c.data.source = "jsonl"
        c.data.source_args = dict(paths="my_data/*.jsonl", text_field="text")
    if "lora" in options:
        c.lora.update(rank=8, alpha=16.0)
    c.data.seq_len = 1024
    c.data.valid_fraction = 0.05
    c.optimizer.update(schedule="cosine", lr=5e-5, warmup_steps=50, final_lr_ratio=0.1, weight_decay=0.01, clip=1.0)
    c.train.update(total_steps=1000, global_batch=8, log_every=10)
    c.checkpoint.update(every_steps=250, keep=2)
    c.eval.update(every_steps=250, valid_batches=16, hooks=["valid_loss"])
    c.mesh = "data=1,fsdp=-1,tensor=1"
    if "lora" in options:
        c.optimizer.lr = 2e-4  # adapters start at zero and take larger steps than full fine-tuning
    return lock(c)
