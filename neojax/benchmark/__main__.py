import sys

from neojax import cli
from neojax.benchmark.command import main

sys.exit(cli.run(main))
