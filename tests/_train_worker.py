"""A training run in its own process, as the command line runs it (exit 2 and one line on bad
input), for the fault tests that drop privileges or fill a disk. Not collected by pytest.

    python tests/_train_worker.py CORPUS TOKENIZER WORKDIR TOTAL_STEPS [no-estimate]

no-estimate: skip the checkpointer's free-space estimate, so that a save meets the full disk itself.
"""
import sys

from support import small_config

from neojax import cli
from neojax.checkpoint.manager import Checkpointer
from neojax.train.loop import train

corpus, tokenizer, workdir, total = sys.argv[1:5]
if sys.argv[5:] == ["no-estimate"]:
    Checkpointer._check_space = lambda self, step, state: None


def main(argv=None) -> int:
    c = small_config(corpus, tokenizer, total_steps=int(total))
    c.checkpoint.update(every_steps=3, keep=5, async_save=True)
    c.eval.every_steps = 3
    print("RESULT step", train(c, workdir)["step"], flush=True)
    return 0


sys.exit(cli.run(main))
