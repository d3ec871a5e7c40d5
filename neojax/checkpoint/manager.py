"""Training checkpoints with orbax: train state, data iterator state and run metadata.

Saves go to a temporary directory that orbax renames once every file is written, so a process
killed mid-save leaves only `*.orbax-checkpoint-tmp*` debris, which is never restored and is
removed at start-up. Restores take abstract targets carrying the shardings of the *current*
mesh, so a run resumes on a different mesh or device count.
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


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
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except ValueError as e:
            raise ValueError(f"checkpoint {self.directory}/{step} does not fit this run's state (was the model "
                             f"or optimizer config changed?): {e}") from e
        return out["state"], out["data"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
