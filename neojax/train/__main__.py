"""python -m neojax.train --config experiments/<name>.py[:variant] --workdir DIR [--config.key=value ...]

    python -m neojax.train --list                      # experiments and registered components
    python -m neojax.train --config quickstart --workdir /tmp/neojax-quickstart
    python -m neojax.train --report WORKDIR           # where the run's time went: goodput, badput, restarts

Re-running the same command resumes from the workdir's latest checkpoint. Multi-host runs pass
--coordinator/--num_processes/--process_id (or NEOJAX_* variables, or rely on TPU/SLURM detection).
Exit codes: 0 done, 2 bad input (one line saying which), 1 stopped by non-finite gradients,
143 preempted by SIGTERM (a checkpoint was saved: re-run the same command).
"""
from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
import time

import jax
from absl import logging as absl_logging

from neojax import cli, paths, registry, sharding
from neojax.model.config import PRESETS
from neojax.train import schema
from neojax.train.config import apply_overrides, experiments, load_experiment
from neojax.train.loop import NonFiniteError, train
from neojax.train.report import run_report
from neojax.train.schema import ConfigError

PREEMPTED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process ended by it


def list_registry() -> str:
    lines = ["experiments (--config NAME[:variant]):"]
    for name, path in experiments().items():
        doc = (_docstring(path) or "").strip().splitlines()
        lines.append(f"  {name:<22} {doc[0] if doc else ''}")
    lines.append(f"model presets: {', '.join(PRESETS)}")
    for kind in registry.kinds():
        lines.append(f"{kind}: {', '.join(registry.names(kind))}")
    lines.append("config keys (--config.KEY=VALUE; default, meaning):")
    for key, field in schema.fields():
        lines.append(f"  {key:<30} {json.dumps(field.default, default=str):<26} {field.doc}".rstrip())
    return "\n".join(lines)


def _docstring(path):
    with open(path) as f:
        return ast.get_docstring(ast.parse(f.read()))


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(the other arguments, [(key, value)] of every --config.key=value or --config.key value)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise cli.UsageError(f"{arg}: give a value (--config.{key}=VALUE)")
                value, i = argv[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse(argv: list[str]):
    """(the resolved config, the parsed command-line options)."""
    rest, overrides = split_overrides(list(argv))
    parser = cli.ArgumentParser(prog="python -m neojax.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment name or file, [:variant]")
    parser.add_argument("--workdir", required=True, help="directory for everything the run produces")
    parser.add_argument("--adopt_config", action="store_true",
                        help="resume a workdir whose config.json is lost with this command's config")
    sharding.add_distributed_options(parser)
    args = parser.parse_args(rest)
    if not args.workdir.strip():
        raise cli.UsageError("--workdir is empty; give a directory for the run")
    with cli.about("--workdir"):
        paths.scheme(args.workdir)
    try:
        config = load_experiment(args.config)
    except ValueError as e:  # an experiment's own "unknown variant" message, or an unknown name
        raise cli.UsageError(f"--config {args.config}: {cli.message(e)}") from None
    return apply_overrides(config, overrides), args


def main(argv=None) -> int:
    started = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--list" in argv:
        print(list_registry())
        return 0
    if "--report" in argv:
        if len(argv) != 2 or argv[0] != "--report":
            raise cli.UsageError("--report WORKDIR stands alone: python -m neojax.train --report WORKDIR")
        return run_report(argv[1])
    config, args = parse(argv)  # train() validates the whole config before any work
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's per-save and read-only notices
    peers = sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        result = train(config, args.workdir, args.adopt_config, started)
    except ConfigError as e:  # worded as the flags that set the keys
        raise e.for_flags() from None
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception:
        if peers is not None:  # a dead peer: one line naming it (exit 75) instead of the collective's error
            peers.blame_lost_peer()
        raise
    if result.get("preempted"):
        if jax.process_index() == 0:
            print(f"preempted (SIGTERM) at step {result['step']}: saved; resume with the same command", flush=True)
        return PREEMPTED_EXIT
    if config.objective != "lm" or jax.process_index() != 0:  # process 0 alone speaks for the run
        return 0
    workdir = args.workdir
    w = shlex.quote(workdir)
    print(f"\ndone: step {result['step']} in {result.get('wall_time_s', 0):.0f}s. Next:\n"
          f"  python -m neojax.generate --checkpoint {w} --prompt \"def \" --max_new_tokens 64 "
          "--temperature 0.8 --top_p 0.95\n"
          f"  python -m neojax.evaluate --checkpoint {w} --sample_tasks --tasks lambada_openai,piqa\n"
          f"  python -m neojax.convert {w} {shlex.quote(str(paths.path(workdir) / 'hf'))} --to hf --overwrite\n"
          f"Curves: tensorboard --logdir {shlex.quote(str(paths.path(workdir) / 'tb'))} (pip install tensorboard)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
