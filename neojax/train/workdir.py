"""A workdir belongs to one run: it is locked while training, and a resume must not change the run.

    with Workdir.open(config, path) as wd:    # refuses a file, an unwritable path, a second process,
        ...                                   # and a saved config.json that differs (see config_changes)
        wd.write_config()                     # once the model and data are built

Nothing but the lock file is written before these checks pass. On object storage (gs://, s3://),
which has no file locks, the lock is a lease: an object naming the holder that process 0 rewrites
every LEASE_REFRESH seconds; a lease older than LEASE_EXPIRY is taken over (its holder died). Two
runs started within the same second can both take a lease: the check narrows the race, it cannot
close it without conditional writes, which fsspec does not offer for every store.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time

import jax

from neojax import paths
from neojax.cli import UsageError, message
from neojax.files import write_json
from neojax.train.config import config_changes

LOCK_NAME = ".lock"
# what a run keeps in its workdir: name -> a folder (True) or a file (False)
LAYOUT = {"checkpoints": True, "tb": True, "model": True, "data_cache": True, "config.json": False,
          "metrics.jsonl": False, LOCK_NAME: False}
LEASE_REFRESH, LEASE_EXPIRY = 30.0, 120.0  # seconds (object storage)


class Workdir:
    def __init__(self, path: str, config, adopt_config: bool = False):
        self.path, self.config, self.adopt_config = path, config, adopt_config
        self.remote = paths.is_remote(path)
        self.config_path = str(paths.path(path) / "config.json")
        self._lock = None
        self._lease_stop = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, config, path: str, adopt_config: bool = False):
        wd = cls(path, config, adopt_config)
        wd._prepare()
        try:
            if jax.process_index() == 0:  # hosts of a multi-host run share one workdir
                wd._acquire()
            wd._check_resume()
            yield wd
        finally:
            wd._release()

    def _prepare(self) -> None:
        if self.remote:
            return  # object storage has no directories to create; writability shows at the lease
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"--workdir {self.path} is a file, not a directory; choose a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--workdir {self.path} cannot be created ({e.strerror}); choose another directory") \
                from None
        for name, folder in LAYOUT.items():  # what the run will write there must be of the kind it writes
            entry = os.path.join(self.path, name)
            if os.path.exists(entry) and os.path.isdir(entry) != folder:
                found, kept = paths.kind_of(os.stat(entry).st_mode), "a folder" if folder else "a file"
                raise UsageError(f"--workdir {self.path}: {name} is {found}, where the run keeps {kept}; move it away "
                                 "(or restore what was there)")

    def _acquire(self) -> None:
        if self.remote:
            return self._acquire_lease()
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

    def _acquire_lease(self) -> None:
        lease = paths.path(self.path) / LOCK_NAME
        try:
            held = json.loads(lease.read_text()) if lease.exists() else None
        except (OSError, ValueError):
            held = None
        if isinstance(held, dict) and time.time() - float(held.get("time", 0)) < LEASE_EXPIRY and \
                not _gone(held):
            raise UsageError(f"--workdir {self.path} is in use by another training process (pid {held.get('pid')} "
                             f"on {held.get('host')}, lease renewed {time.time() - float(held['time']):.0f}s ago; "
                             f"a lease not renewed for {LEASE_EXPIRY:.0f}s lapses); wait for it to finish, stop it, or "
                             "choose another --workdir")
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        try:
            paths.write_text(lease, json.dumps({**me, "time": time.time()}))
        except OSError as e:
            raise UsageError(f"--workdir {self.path} is not writable ({message(e)}); check the bucket "
                             "and your credentials, or choose another --workdir") from None
        self._lease_stop = threading.Event()

        def renew():
            while not self._lease_stop.wait(LEASE_REFRESH):
                with contextlib.suppress(OSError):
                    paths.write_text(lease, json.dumps({**me, "time": time.time()}))

        threading.Thread(target=renew, name="neojax-workdir-lease", daemon=True).start()

    def _release(self) -> None:
        if self._lease_stop is not None:
            self._lease_stop.set()
            self._lease_stop = None
            with contextlib.suppress(OSError):
                (paths.path(self.path) / LOCK_NAME).unlink()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def saved_config(self):
        """The config.json of the run this workdir holds, or None."""
        config_path = paths.path(self.config_path)
        if not config_path.exists():
            return None
        try:
            saved = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{self.config_path} is damaged ({e}); restore it or start in a new --workdir") from None
        except OSError as e:
            raise UsageError(f"{self.config_path} cannot be read ({message(e)}); give this user read access, or "
                             "start in a new --workdir") from None
        if not isinstance(saved, dict):
            raise UsageError(f"{self.config_path} holds a JSON {type(saved).__name__}, not a run's config; restore "
                             "it or start in a new --workdir")
        return saved

    def _check_resume(self) -> None:
        saved = self.saved_config()
        if self.adopt_config and (saved is not None or not self._has_checkpoints()):
            raise UsageError(f"--adopt_config: --workdir {self.path} " + (
                "has its config.json" if saved is not None else "has no checkpoints") +
                "; the flag is only for resuming checkpoints whose config.json is lost. Drop it")
        if saved is None:
            if self._has_checkpoints() and not self.adopt_config:
                raise UsageError(f"--workdir {self.path} has checkpoints but no config.json, so a resume cannot be "
                                 "checked against the run that made them; restore config.json, or add --adopt_config "
                                 "to resume with this command's config")
            return
        refused, noted = config_changes(saved, json.loads(self.config.to_json_best_effort()))
        if refused:
            raise UsageError(f"--workdir {self.path} holds a run with another config; a resume may change only "
                             "steps, logging, checkpoint cadence, evaluation hooks, the mesh and optimizer rates. "
                             "Use a "
                             "new --workdir, or the saved values. Differences: " + "; ".join(refused))
        if noted and jax.process_index() == 0:
            print("resuming with changed optimizer settings: " + "; ".join(noted), flush=True)

    def _has_checkpoints(self) -> bool:
        checkpoints = paths.path(self.path) / "checkpoints"
        return checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())

    def write_config(self) -> None:
        if jax.process_index() != 0:
            return
        write_json(self.config_path, self.config.to_json_best_effort(indent=2))


def _gone(lease: dict) -> bool:
    """Whether the lease's holder ran on this host and has exited (a killed run is resumed at once)."""
    if lease.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(lease.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (OSError, TypeError, ValueError):
        return False
    return False
