"""The full schema of a training config. Experiments start from `base_config()`, change values
and return it locked, so a typo (in a file or a --config.key=value flag) names the valid keys."""
from __future__ import annotations

import glob
import importlib.util
import os

import ml_collections

EXPERIMENT_DIRS = [os.path.join(os.getcwd(), "experiments"),
                   os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "experiments")]


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"                 # lm (neojax.train.loop) | classify (neojax.finetune.classify)
    c.model = dict(
        preset="tiny",            # a neojax.model preset, or "" when init_from gives the model
        init_from="",             # HF / neojax checkpoint to start from (fine-tuning)
        overrides={},             # GPTNeoConfig fields changed on top of the preset
        dtype="float32",          # activations; params stay float32
        remat="none",             # none | full | dots
    )
    c.data = dict(
        source="stdlib",          # a registered data_source, "mixture", or "chat" (neojax.finetune.chat)
        source_args={},           # options of that source
        mixture=[],               # for source="mixture": [{"source", "source_args", "weight"}]
        tokenizer="",             # a tokenizer file/dir; "" = the checkpoint's, or train_sentencepiece
        train_sentencepiece=0,    # > 0: train a sentencepiece model of this vocab on the source (cached)
        seq_len=128,
        valid_fraction=0.01,
        on_error="raise",         # raise | skip bad records
        cache_dir="",             # default: WORKDIR/data_cache
        seed=0,
    )
    c.optimizer = dict(schedule="cosine", lr=3e-4, warmup_steps=100, decay_steps=0, final_lr_ratio=0.1,
                       b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0)
    c.lora = dict(rank=0,              # > 0: train LoRA adapters of this rank; the base stays frozen
                  alpha=16.0,          # adapter scale = alpha / rank
                  targets=[r"attn/(q|v)_proj/kernel"])  # regexes over parameter paths (h_0/attn/q_proj/kernel)
    c.distill = dict(teacher="",          # a checkpoint (HF / neojax / workdir): distil its predictions
                     temperature=2.0,     # softening of both distributions
                     alpha=0.5)           # weight of T^2 * KL(teacher || student) against the LM loss
    c.train = dict(total_steps=1000, global_batch=16, microbatches=1, z_loss=0.0, seed=0,
                   max_nonfinite_streak=10, log_every=10, report_mfu=True)
    c.checkpoint = dict(every_steps=200, keep=3, keep_period=0, async_save=True)
    c.eval = dict(every_steps=200, valid_batches=8, hooks=["valid_loss"], sample_prompts=[],
                  sample_max_new_tokens=48, sample_temperature=0.0,
                  tasks=[], task_data_dir="", task_limit=0, num_fewshot=0)  # for the "tasks" hook
    c.mesh = "data=-1,fsdp=1,tensor=1"
    c.sharding_rules = ()         # empty = neojax.sharding.DEFAULT_RULES
    return c


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.lock()
    return c


def experiments() -> dict[str, str]:
    """name -> path of every experiment file (the registry of experiments)."""
    found = {}
    for directory in EXPERIMENT_DIRS:
        for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
            name = os.path.basename(path)[:-3]
            if not name.startswith("_"):
                found.setdefault(name, path)
    return found


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """The config of "name[:variant]" or "path/to/file.py[:variant]", as --config reads it
    (for notebooks and scripts)."""
    path, _, variant = spec.partition(":")
    if not os.path.exists(path):
        known = experiments()
        if path not in known:
            raise ValueError(f"unknown experiment {spec!r}; registered experiments: {sorted(known)} "
                             "(or give a path to a config file)")
        path = known[path]
    module_spec = importlib.util.spec_from_file_location(f"experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
