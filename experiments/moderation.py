"""python -m neojax.train --config experiments/moderation.py --workdir /tmp/neojax-gate --config.model.init_from=/models/gpt-neo-125M --config.classify.train=tasks/toxigen.jsonl

A moderation gate for the server: GPT-Neo fine-tuned to tell hateful statements from benign ones,
on ToxiGen's annotated statements. `python -m neojax.evaluate --prepare toxigen --data_dir tasks/`
writes them, each with "label": "toxic" or "benign" by the harness's own rule (toxicity_ai +
toxicity_human > 5.5). Hold some out for --config.classify.valid to get report.json. The run's
hf/ folder is the gate:

    python -m neojax.serve --checkpoint /models/gpt-neo-1.3B --moderation /tmp/neojax-gate/hf

"benign" is the safe label (the first of classify.labels); the gate flags a text when
1 - p(benign) exceeds --moderation_threshold. See docs/responsible_use.md for what such a gate can
and cannot catch.
"""
from neojax.train.config import load_experiment


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"moderation has no variants (got {variant!r})")
    c = load_experiment("sentiment")  # the classification recipe, on ToxiGen's statements
    c.classify.update(train="tasks/toxigen.jsonl", labels=["benign", "toxic"])
    return c
