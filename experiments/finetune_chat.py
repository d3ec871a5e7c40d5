"""python -m neojax.train --config experiments/finetune_chat.py --workdir /tmp/neojax-chat --config.model.init_from=/models/gpt-neo-125M --config.data.source_args.paths='chats/*.jsonl'

Chat / instruction fine-tuning from jsonl conversations ({"messages": [{"role", "content"}...]} or
{"prompt", "response"}): examples packed into rows with segment ids (no attention across
examples, positions restart per example), loss on the assistant's answers only. Variant `lora`
trains rank-8 adapters instead of every weight. Then talk to it in the same template:
    python -m neojax.generate --checkpoint /tmp/neojax-chat --chat --temperature 0.7 --top_p 0.9
"""
from neojax.train.config import base_config, lock


def get_config(variant: str = ""):
    if variant not in ("", "lora"):
        raise ValueError(f"unknown finetune_chat variant {variant!r}; variants: '' (full), 'lora'")
    c = base_config()
    c.model.preset = ""
    c.model.init_from = "/models/gpt-neo-125M"
    c.data.source = "chat"
    c.data.source_args = dict(paths="chats/*.jsonl")  # add valid_paths=... for a separate validation set
    c.data.seq_len = 1024
    c.data.valid_fraction = 0.05
    c.optimizer.update(schedule="cosine", lr=2e-5, warmup_steps=30, final_lr_ratio=0.1, weight_decay=0.0)
    c.train.update(total_steps=500, global_batch=8, log_every=10)
    c.checkpoint.update(every_steps=250, keep=2)
    c.eval.update(every_steps=100, valid_batches=8, hooks=["valid_loss", "samples"],
                  sample_prompts=["User: What can you help me with?\nAssistant:"])
    c.mesh = "data=1,fsdp=-1,tensor=1"
    if variant == "lora":
        c.lora.update(rank=8, alpha=16.0)
        c.optimizer.lr = 2e-4
    return lock(c)
