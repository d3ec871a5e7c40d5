"""The run the workdir and disk-fault tests interrupt, damage and resume (not collected by pytest)."""
import glob
import os

import jax
import numpy as np
from support import small_config

from neojax import checkpoint
from neojax.train.metrics import read_metrics

TOTAL = 9


def config(corpus, tokenizer, total=TOTAL, **changes):
    c = small_config(corpus, tokenizer.source, total_steps=total)
    c.checkpoint.update(every_steps=3, keep=5, async_save=False)
    c.eval.every_steps = 3
    for key, value in changes.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def params(workdir):
    return checkpoint.load(workdir).params


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def losses(workdir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]


def state_data_files(step_dir) -> list:
    """Every OCDBT data file of a checkpoint's state: orbax's merged root (state/d) and each
    process's own; which of them a restore reads varies from run to run."""
    state = os.path.join(step_dir, "state")
    files = glob.glob(os.path.join(state, "d", "*")) + glob.glob(os.path.join(state, "ocdbt.process_*", "d", "*"))
    assert files
    return files
