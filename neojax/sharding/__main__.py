import sys

from neojax import cli
from neojax.sharding.plan import main

sys.exit(cli.run(main))
