"""The multi-host lifecycle: jax.distributed started from flags or the environment, and a watch over
the peers (`PeerWatch`) that ends a process in one line when another is lost."""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Optional

import jax
from jax._src import distributed  # the key-value client initialize() made: jax has no public API for it

from neojax import cli
from neojax.errors import UsageError
from neojax.sharding import lobby

HEARTBEAT_S = 2.0  # how often each process says it is alive
LOST_AFTER_S = 30.0  # silence after which a peer is declared lost (the coordination service's own limit is longer)
SUSPECT_S = 6.0  # the same, once a collective has failed (a dead peer resets its connections at once)
LOST_EXIT = lobby.LOST_EXIT  # EX_TEMPFAIL: the run stopped for a reason outside it; re-running resumes


def add_distributed_options(parser) -> None:
    parser.add_argument("--coordinator", help="multi-host: coordinator address host:port")
    parser.add_argument("--num_processes", type=cli.positive_int, help="multi-host: number of processes")
    parser.add_argument("--process_id", type=cli.nonneg_int, help="multi-host: this process's index")


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> Optional["PeerWatch"]:
    """jax.distributed.initialize from arguments, else NEOJAX_COORDINATOR / NEOJAX_NUM_PROCESSES /
    NEOJAX_PROCESS_ID, else JAX's own detection (TPU pods, SLURM, Open MPI). No-op for one process.
    Flags are checked first (UsageError), and the processes meet in a lobby (neojax.sharding.lobby)
    before JAX's coordination service starts. A multi-process run then watches its peers: returns
    the started PeerWatch (None: one process)."""
    coordinator = coordinator or os.environ.get("NEOJAX_COORDINATOR")
    num_processes = num_processes or env_int("NEOJAX_NUM_PROCESSES", "--num_processes")
    process_id = process_id if process_id is not None else env_int("NEOJAX_PROCESS_ID", "--process_id")
    # The coordination service aborts a survivor (a C++ stack trace) after its heartbeat timeout;
    # PeerWatch reports a lost peer in one line well before that.
    timeouts = dict(heartbeat_timeout_seconds=int(4 * LOST_AFTER_S), initialization_timeout=300)
    if num_processes == 1:
        return None  # one process: nothing to coordinate
    if coordinator is None and num_processes is None:
        if not any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                                             "JAX_COORDINATOR_ADDRESS")):
            return None  # a single-process run
        jax.distributed.initialize(**timeouts)
    else:
        check_launch(coordinator, num_processes, process_id)
        lobby.meet(coordinator, num_processes, process_id)
        # Only the CPU backend reads this (cross-process CPU collectives); asking for the platform
        # here would start the backend, which must happen after initialize().
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, **timeouts)
    return PeerWatch().start() if jax.process_count() > 1 else None


def check_launch(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int]) -> None:
    """A UsageError naming the flag when the multi-host flags cannot describe one process of a run."""
    if coordinator is None:
        raise UsageError(f"--num_processes {num_processes} needs --coordinator host:port (process 0's address, "
                         "the same on every process)")
    lobby.address(coordinator)
    if num_processes is None:
        raise UsageError(f"--coordinator {coordinator} needs --num_processes N (how many processes the run has)")
    if process_id is None:
        raise UsageError(f"--coordinator {coordinator} needs --process_id I (this process's index, 0 to "
                         f"{num_processes - 1})")
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process_id {process_id} is outside 0..{num_processes - 1} for --num_processes "
                         f"{num_processes}: give each process its own index below the count")


def coordination_client():
    """The key-value client of the coordination service jax.distributed runs (None: one process)."""
    return distributed.global_state.client


def env_int(name: str, flag: str) -> Optional[int]:
    """The integer in environment variable `name` (None: unset), or a UsageError naming it and `flag`."""
    if name not in os.environ:
        return None
    text = os.environ[name].strip()
    if not text.isdigit():
        raise UsageError(f"{name}={os.environ[name]!r} is not a whole number >= 0; set it (or {flag}) to one")
    return int(text)


class PeerWatch:
    """A daemon thread that counts up this process's heartbeat in the coordination service's
    key-value store and reads every peer's. A peer whose count stops for `lost_after` seconds
    (killed, its host gone), or a coordinator that stops answering (process 0 lost), ends this
    process at once with one line naming the lost process and exit code LOST_EXIT, even while the
    main thread waits inside a collective that will never complete. Re-running every process
    resumes from the last checkpoint."""

    def __init__(self, every: float = HEARTBEAT_S, lost_after: float = LOST_AFTER_S):
        self.every, self.lost_after = every, lost_after
        self.client, self.me, self.count = distributed.global_state.client, jax.process_index(), jax.process_count()
        self.collective_failed = threading.Event()  # a collective failed: a dead peer is suspected
        self.closing = threading.Event()  # this process is exiting: a coordination service going away is expected
        self.thread = threading.Thread(target=self._run, name="neojax-peer-watch", daemon=True)

    def start(self) -> "PeerWatch":
        atexit.register(self.close)  # before jax's own shutdown at exit (atexit runs last-registered first)
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop the thread before the interpreter finalises: a daemon thread coming back from the
        client's C++ call during finalisation is unwound through it, and the process aborts."""
        self.closing.set()
        self.thread.join(timeout=2 * self.every)

    def blame_lost_peer(self) -> None:
        """Called with a failure in hand: a peer that died makes the next collective fail at once
        (connection reset). Give the watch a few heartbeats to name the lost process (it then ends
        this process in one line); if every peer is alive, return and let the failure speak."""
        self.collective_failed.set()
        time.sleep(SUSPECT_S + 3 * self.every)

    def _lost(self, who: str, why: str) -> None:
        print(f"error: {who} of this {self.count}-process run was lost ({why}); stopping process {self.me} too. "
              "Re-run every process with the same command to resume from the last checkpoint", file=sys.stderr,
              flush=True)
        os._exit(LOST_EXIT)

    def _run(self) -> None:
        seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.me}
        beat = 0
        while True:
            beat += 1
            try:
                self.client.key_value_set(f"neojax/beat/{self.me}", str(beat), allow_overwrite=True)
                beats = dict(self.client.key_value_dir_get("neojax/beat/"))
            except Exception as e:  # the coordinator (process 0) is gone, or every process is done
                time.sleep(self.every / 2)  # a shutdown that just stopped the service has cleared the client by now
                if self.closing.is_set() or distributed.global_state.client is None:
                    return  # this process is shutting down: the service went away on purpose
                if self.me == 0:
                    raise
                self._lost("process 0 (the coordinator)", f"its coordination service stopped answering: "
                           f"{str(e).splitlines()[0][:80]}")
            now = time.monotonic()
            limit = min(self.lost_after, SUSPECT_S) if self.collective_failed.is_set() else self.lost_after
            for p, (last, since) in seen.items():
                value = beats.get(f"neojax/beat/{p}")
                if value != last:
                    seen[p] = (value, now)
                elif now - since > limit:
                    self._lost(f"process {p}", f"no heartbeat for {now - since:.0f}s")
            if self.closing.wait(self.every):
                return
