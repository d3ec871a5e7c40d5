"""python -m neojax.train --config experiments/<name>.py[:variant] --workdir DIR [--config.key=value ...]

    python -m neojax.train --list                      # experiments and registered components
    python -m neojax.train --config quickstart --workdir /tmp/neojax-quickstart

Re-running the same command resumes from the workdir's latest checkpoint. Multi-host runs pass
--coordinator/--num_processes/--process_id (or NEOJAX_* variables, or rely on TPU/SLURM detection).
"""
from __future__ import annotations

import os
import sys

from neojax.train.config import experiments

def resolve_config_arg(argv: list[str]) -> list[str]:
    """Let --config take an experiment name; an unknown one lists the registry."""
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = None, None
        if arg == "--config" and i + 1 < len(out):
            value, index, prefix = out[i + 1], i + 1, ""
        elif arg.startswith("--config="):
            value, index, prefix = arg[len("--config="):], i, "--config="
        if value is None:
            continue
        path, sep, variant = value.partition(":")
        if not os.path.exists(path):
            known = experiments()
            name = os.path.basename(path)[:-3] if path.endswith(".py") else path
            if name not in known:
                raise SystemExit(f"error: unknown experiment {value!r}; registered experiments: {sorted(known)} "
                                 "(or give a path to a config file)")
            path = known[name]
        out[index] = prefix + path + sep + variant
    return out


def list_registry() -> str:
    import importlib
    from neojax import registry
    for module in ("neojax.model", "neojax.data.sources", "neojax.train.optim", "neojax.train.hooks",
                   "neojax.model.config"):
        importlib.import_module(module)
    from neojax.model.config import PRESETS
    lines = ["experiments (--config NAME[:variant]):"]
    for name, path in experiments().items():
        doc = (_docstring(path) or "").strip().splitlines()
        lines.append(f"  {name:<22} {doc[0] if doc else ''}")
    lines.append(f"model presets: {', '.join(PRESETS)}")
    for kind in registry.kinds():
        lines.append(f"{kind}: {', '.join(registry.names(kind))}")
    return "\n".join(lines)


def _docstring(path):
    import ast
    with open(path) as f:
        return ast.get_docstring(ast.parse(f.read()))


def main():
    argv = sys.argv
    if "--list" in argv:
        print(list_registry())
        return 0
    argv = resolve_config_arg(argv)
    from absl import app, flags
    from ml_collections import config_flags
    config_flag = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for everything the run produces")
    flags.DEFINE_string("coordinator", None, "multi-host: coordinator address host:port")
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
        from neojax import sharding
        sharding.initialize_distributed(flags.FLAGS.coordinator, flags.FLAGS.num_processes, flags.FLAGS.process_id)
        from neojax.train.loop import NonFiniteError, train
        workdir, task = flags.FLAGS.workdir, config_flag.value.task
        if task == "classify":
            from neojax.finetune.classify import train
        elif task != "lm":
            print(f"error: unknown task {task!r}; tasks: lm, classify", file=sys.stderr)
            return 2
        try:
            result = train(config_flag.value, workdir)
        except NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if task != "lm":
            return 0
        print(f"\ndone: step {result['step']} in {result.get('wall_time_s', 0):.0f}s. Next:\n"
              f"  python -m neojax.generate --checkpoint {workdir} --prompt \"def \" --max_new_tokens 64\n"
              f"  python -m neojax.evaluate --checkpoint {workdir} --text_files 'path/*.txt'\n"
              f"  python -m neojax.convert {workdir} {workdir}/hf --to hf")
        return 0
    app.run(run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
