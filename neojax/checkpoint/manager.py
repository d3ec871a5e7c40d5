"""Training checkpoints with orbax: train state, data iterator state and run metadata.

Saves go to a temporary directory that orbax renames once every file is written, so a process
killed mid-save leaves only `*.orbax-checkpoint-tmp*` debris, which is never restored and is
removed at start-up. Restores take abstract targets carrying the shardings of the *current*
mesh, so a run resumes on a different mesh or device count. A damaged checkpoint (a truncated
array file, a missing item, corrupt metadata) is moved aside and the newest intact one restored.

Local and gs:// directories are orbax's own (tensorstore writes gs:// natively; orbax commits there
without renames). orbax 0.12 cannot write arrays to s3://, so there a checkpoint is saved to a local
staging folder and uploaded once complete, its UPLOADED marker last; a resume downloads the steps
that carry the marker. Staged checkpoints are for one-process runs (each host would stage apart).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from neojax import paths
from neojax.checkpoint.io import first_line, quiet_orbax, unreadable
from neojax.cli import UsageError
from neojax.model.quant import param_bytes

UPLOADED = "neojax-uploaded"  # the last object of a staged checkpoint: its presence says it is complete

# orbax's words for a checkpoint that is intact but holds another state (a changed config).
MISMATCH = ("Structure mismatch", "is not compatible with the stored shape")


# how orbax and tensorstore word a full disk
NO_SPACE = ("No space left on device", "os_error_code='28'", "[Errno 28]")


def _tree_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB"


class StateMismatch(ValueError):
    """An intact checkpoint whose arrays do not fit the state this run builds."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, keep_period: int = 0, async_save: bool = True):
        self.directory = str(paths.path(directory))
        self.staging = None if paths.orbax_native(directory) else tempfile.mkdtemp(prefix="neojax-ckpt-")
        if self.staging is not None:
            if jax.process_count() > 1:
                raise UsageError(f"{directory}: a multi-process run cannot checkpoint to {paths.scheme(directory)}:// "
                                 "(orbax 0.12 has no native writer there); use gs:// or a disk all hosts share")
            self._download()
            async_save = False  # a step is uploaded as soon as it is written
        where = paths.path(self.staging or self.directory)
        if jax.process_index() == 0 and where.exists():
            for debris in where.glob("*.orbax-checkpoint-tmp*"):
                paths.remove_tree(debris)
        policies = [pp.LatestN(keep)] + ([pp.EveryNSteps(keep_period)] if keep_period else [])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies), create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(where, options=options, item_names=("state", "data", "meta"))
        self._saving: Optional[int] = None  # the step of the last save begun
        quiet_orbax()

    def _download(self) -> None:
        remote = paths.path(self.directory)
        for step_dir in remote.iterdir() if remote.exists() else ():
            if step_dir.name.isdigit() and (step_dir / UPLOADED).exists():
                paths.download_tree(step_dir, paths.path(self.staging) / step_dir.name)

    def _upload(self) -> None:
        """Mirror the staging folder's steps: new ones uploaded (marker last), dropped ones deleted."""
        self.manager.wait_until_finished()
        remote, local = paths.path(self.directory), paths.path(self.staging)
        steps = {str(s) for s in self.manager.all_steps()}
        for step in steps:
            if not (remote / step / UPLOADED).exists():
                (local / step / UPLOADED).write_text("")
                paths.upload_tree(local / step, remote / step, last=(UPLOADED,))
        for step_dir in remote.iterdir() if remote.exists() else ():
            if step_dir.name.isdigit() and step_dir.name not in steps:
                paths.remove_tree(step_dir)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Save `step` (asynchronously where enabled). A disk without room for it is one line
        before anything is written; a save that still fails for space is one line at the next
        save, check() or close(), naming the checkpoint that is intact."""
        self.wait()  # the previous save first (orbax would wait for it anyway): its space is then counted
        self._check_space(step, state)
        with self._disk_faults(step):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta)), force=True)
            if self.staging is not None:
                self._upload()
        self._saving = step

    def check(self) -> None:
        """Raise now if a finished background save failed (cheap: no waiting)."""
        with self._disk_faults(self._saving):
            self.manager.check_for_errors()

    def _check_space(self, step: int, state) -> None:
        where = self.staging or self.directory
        if paths.is_remote(where):
            return
        last = self.latest_step()
        on_disk = _tree_bytes(os.path.join(where, str(last))) if last is not None else 0
        # the last checkpoint's size (or the arrays'), with room for the save's metadata and temporary files
        need = int(1.1 * max(on_disk, param_bytes(state))) + 2 ** 20
        free = shutil.disk_usage(where).free
        if free < need:
            raise UsageError(f"{self._full(step)}: the disk has {_mb(free)} free, a checkpoint needs about "
                             f"{_mb(need)}; {self._remedy()}")

    @contextlib.contextmanager
    def _disk_faults(self, step: Optional[int]):
        """Orbax's errors for a full disk (in any of its threads) as one line naming the workdir."""
        try:
            yield
        except Exception as e:
            if not any(sign in str(e) for sign in NO_SPACE):
                raise
            with contextlib.suppress(Exception):  # the save's other writers end first: none writes after the removal
                self.manager.wait_until_finished()
            for debris in paths.path(self.staging or self.directory).glob("*.orbax-checkpoint-tmp*"):
                with contextlib.suppress(OSError):
                    paths.remove_tree(debris)  # the partial save, to give the space back
            raise UsageError(f"{self._full(step)}: no space left on its disk ({first_line(e, 80)}); "
                             f"{self._remedy()}") from None

    def _full(self, step) -> str:
        return f"--workdir {paths.path(self.directory).parent}: checkpoint {step if step is not None else ''}".rstrip()

    def _remedy(self) -> str:
        self.manager.reload()
        intact = self.latest_step()
        resume = f"it resumes from checkpoint {intact}, which is intact" if intact is not None else "it starts over"
        return f"free space (or lower checkpoint.keep) and run the same command: {resume}"

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
                blocked = unreadable(str(paths.path(self.staging or self.directory) / str(step)))
                if blocked:  # not damage: nothing is moved, and the run does not fall back to an older step
                    raise UsageError(f"checkpoint {self.directory}/{step} cannot be read: {blocked}; give this user "
                                     "read access (chmod, chown) and run again") from None
                moved = self._set_aside(step)
                print(f"warning: checkpoint {self.directory}/{step} is damaged ({first_line(e)}); moved it to "
                      f"{moved}, trying the previous one", file=sys.stderr, flush=True)
        return None

    def _set_aside(self, step: int) -> str:
        aside = paths.path(self.directory).parent / "damaged_checkpoints"
        target, n = aside / str(step), 1
        while target.exists():
            target, n = aside / f"{step}.{n}", n + 1
        paths.move_tree(paths.path(self.directory) / str(step), target)
        if self.staging is not None:
            paths.remove_tree(paths.path(self.staging) / str(step))
        self.manager.reload()
        return str(target)

    def wait(self) -> None:
        with self._disk_faults(self._saving):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            try:
                self.wait()
            except BaseException:
                with contextlib.suppress(Exception):  # it would raise the same failure again
                    self.manager.close()
                raise
            self.manager.close()
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
