"""python -m neojax.train --config experiments/sentiment.py --workdir /tmp/neojax-sentiment --config.model.init_from=/models/gpt-neo-125M --config.classify.train=sst2/train.jsonl --config.classify.valid=sst2/valid.jsonl

Sentiment (or any label) classification: GPT-Neo with a linear head on the last non-padding token,
as transformers' GPTNeoForSequenceClassification. Data: jsonl of {"text", "label"}, or a prepared
TFDS dataset, e.g. --config.classify.train=tfds:imdb_reviews --config.classify.valid=tfds:imdb_reviews
--config.classify.valid_split=test. The workdir gets report.json (accuracy, macro F1, per class)
and hf/ (loadable by transformers).
"""
from neojax.train.config import base_config, lock


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"sentiment has no variants (got {variant!r})")
    c = base_config()
    c.objective = "classify"
    c.classify.train = "train.jsonl"
    c.model.preset = ""
    c.model.init_from = "/models/gpt-neo-125M"
    c.data.seq_len = 128
    c.optimizer.update(schedule="linear", lr=2e-5, warmup_steps=50, final_lr_ratio=0.0, weight_decay=0.01)
    c.train.update(total_steps=1000, global_batch=16, log_every=20)
    c.eval.every_steps = 200
    c.eval.hooks = ["classification"]
    return lock(c)
