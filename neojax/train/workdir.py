"""A workdir belongs to one run: it is locked while training, and a resume must not change the run.

    with Workdir.open(config, path) as wd:    # refuses a file, an unwritable path, a second process,
        ...                                   # and a saved config.json that differs (see config_changes)
        wd.write_config()                     # once the model and data are built

Nothing but the lock file is written before these checks pass.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os

import jax

from neojax.cli import UsageError
from neojax.files import write_json
from neojax.train.config import config_changes

LOCK_NAME = ".lock"


class Workdir:
    def __init__(self, path: str, config):
        self.path, self.config = path, config
        self.config_path = os.path.join(path, "config.json")
        self._lock = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, config, path: str):
        wd = cls(path, config)
        wd._prepare()
        try:
            if jax.process_index() == 0:  # hosts of a multi-host run share one workdir
                wd._acquire()
            wd._check_resume()
            yield wd
        finally:
            wd._release()

    def _prepare(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"--workdir {self.path} is a file, not a directory; choose a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--workdir {self.path} cannot be created ({e.strerror}); choose another directory") \
                from None

    def _acquire(self) -> None:
        lock_path = os.path.join(self.path, LOCK_NAME)
        try:
            self._lock = open(lock_path, "a+")
        except OSError as e:
            raise UsageError(f"--workdir {self.path} is not writable ({e.strerror}); choose another directory") \
                from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            self._lock = None
            raise UsageError(f"--workdir {self.path} is in use by another training process (pid {holder}); wait "
                             "for it to finish, stop it, or choose another --workdir") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def _release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def saved_config(self):
        """The config.json of the run this workdir holds, or None."""
        if not os.path.exists(self.config_path):
            return None
        try:
            with open(self.config_path) as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{self.config_path} is damaged ({e}); restore it or start in a new --workdir") from None

    def _check_resume(self) -> None:
        saved = self.saved_config()
        if saved is None:
            return
        refused, noted = config_changes(saved, json.loads(self.config.to_json_best_effort()))
        if refused:
            raise UsageError(f"--workdir {self.path} holds a run with another config; a resume may change only "
                             "steps, logging, checkpoint cadence, evaluation hooks, the mesh and optimizer rates. "
                             "Use a "
                             "new --workdir, or the saved values. Differences: " + "; ".join(refused))
        if noted and jax.process_index() == 0:
            print("resuming with changed optimizer settings: " + "; ".join(noted), flush=True)

    def write_config(self) -> None:
        if jax.process_index() != 0:
            return
        write_json(self.config_path, self.config.to_json_best_effort(indent=2))
