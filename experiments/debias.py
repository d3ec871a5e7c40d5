"""python -m neojax.train --config experiments/debias.py --workdir /tmp/neojax-debias --config.model.init_from=/models/gpt-neo-125M --config.data.source_args.paths='my_data/*.jsonl' --config.eval.task_data_dir=tasks/

Bias mitigation you can measure: fine-tune a checkpoint on your text with counterfactual data
augmentation (data.transform=counterfactual: every document is also seen with its gendered terms
swapped, from neojax's word-pair list or yours via --config.data.transform_args.pairs=FILE), then
the bias suites run on the checkpoint before and after, side by side: WORKDIR/bias_report.json,
.md (the table) and .png (CrowS-Pairs per category). The suites' files come from
`python -m neojax.evaluate --prepare crows_pairs_english,winogender_all,bbq,toxigen --data_dir tasks/`.
Variant `instead` trains on the swapped documents only. How to read the report, and what it cannot
show: docs/responsible_use.md.
"""
from neojax.train.config import base_config, lock


def get_config(variant: str = ""):
    if variant not in ("", "instead"):
        raise ValueError(f"unknown debias variant {variant!r}; variants: '' (original and swapped), 'instead'")
    c = base_config()
    c.model.preset = ""
    c.model.init_from = "/models/gpt-neo-125M"
    c.data.source = "jsonl"
    c.data.source_args = dict(paths="my_data/*.jsonl", text_field="text")
    c.data.update(transform="counterfactual", transform_mode=variant or "also", seq_len=512, valid_fraction=0.02)
    c.optimizer.update(schedule="cosine", lr=2e-5, warmup_steps=50, final_lr_ratio=0.1, weight_decay=0.01)
    c.train.update(total_steps=1000, global_batch=8, log_every=10)
    c.checkpoint.update(every_steps=250, keep=2)
    c.eval.update(every_steps=1000, hooks=["valid_loss", "bias_report"], task_data_dir="tasks/")
    c.mesh = "data=1,fsdp=-1,tensor=1"
    return lock(c)
