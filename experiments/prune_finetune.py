"""python -m neojax.train --config experiments/prune_finetune.py --workdir /tmp/neojax-pruned-ft --config.model.init_from=/tmp/pruned --config.data.source_args.paths='my_texts/*.txt'

Recovery after pruning: fine-tune a pruned checkpoint (python -m neojax.prune ... --output
/tmp/pruned) with its zeros kept (train.keep_zeros): every block kernel weight that is exactly
zero stays zero after every update, so the sparsity pattern (magnitude or 2:4) survives training
and resume. Export as usual (python -m neojax.convert WORKDIR DST --to hf).
"""
from neojax.train.config import load_experiment, lock


def get_config(variant: str = ""):
    c = load_experiment(f"finetune_hf:{variant}" if variant else "finetune_hf")
    c.model.init_from = "/tmp/pruned"
    c.train.keep_zeros = True
    c.optimizer.update(lr=1e-4, warmup_steps=20, weight_decay=0.0)  # decay would pull the kept weights only
    return lock(c)
