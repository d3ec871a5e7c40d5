"""Training checkpoints with orbax: train state, data iterator state and run metadata.

Saves go to a temporary directory that orbax renames once every file is written, so a process
killed mid-save leaves only `*.orbax-checkpoint-tmp*` debris, which is never restored and is
removed at start-up. Restores take abstract targets carrying the shardings of the *current*
mesh, so a run resumes on a different mesh or device count. A damaged checkpoint (a truncated
array file, a missing item, corrupt metadata) is moved aside and the newest intact one restored.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from neojax.checkpoint.io import first_line, quiet_orbax_coroutines

# orbax's words for a checkpoint that is intact but holds another state (a changed config).
MISMATCH = ("Structure mismatch", "is not compatible with the stored shape")


class StateMismatch(ValueError):
    """An intact checkpoint whose arrays do not fit the state this run builds."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, keep_period: int = 0, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        if jax.process_index() == 0:
            for debris in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(debris, ignore_errors=True)
        policies = [pp.LatestN(keep)] + ([pp.EveryNSteps(keep_period)] if keep_period else [])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies), create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
            force=True)

    def restore(self, abstract_state, step: Optional[int] = None) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of `step` (default: latest), placed per abstract_state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        quiet_orbax_coroutines()
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except ValueError as e:
            if any(m in str(e) for m in MISMATCH):
                raise StateMismatch(f"checkpoint {self.directory}/{step} does not fit this run's state (was the "
                                    f"model or optimizer config changed?): {first_line(e)}") from e
            raise
        return out["state"], out["data"], out["meta"]

    def restore_intact(self, abstract_state) -> Optional[tuple[int, Any, dict, dict]]:
        """(step, state, data state, meta) of the newest checkpoint that restores, or None if there
        is none. Each damaged newer one is named in one line and moved to ../damaged_checkpoints/."""
        while (step := self.latest_step()) is not None:
            try:
                return (step, *self.restore(abstract_state, step))
            except StateMismatch:
                raise
            except Exception as e:  # orbax and tensorstore raise many types for unreadable files
                moved = self._set_aside(step)
                print(f"warning: checkpoint {self.directory}/{step} is damaged ({first_line(e)}); moved it to "
                      f"{moved}, trying the previous one", file=sys.stderr, flush=True)
        return None

    def _set_aside(self, step: int) -> str:
        aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        os.makedirs(aside, exist_ok=True)
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):
            target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
