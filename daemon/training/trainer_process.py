"""Training in a child process, so a crash or an out-of-memory kill never takes the daemon down.

The parent records the run row (status `running`) before it starts the child, relays the child's
progress messages, and, if the child dies without reporting, marks the run failed and sweeps any
half-written artifact folder. Whatever the end, it then settles the registry (`_settle`): a row the child
could not close (it died, or the database was cut) is closed from the outcome, and a version folder of the
run that no registry row names is removed; an unreachable database is waited for. On shutdown the parent
asks the child to stop at its next step (it then keeps nothing: no half-trained version is registered) and
kills it after the grace period.

The child dies with the daemon: on Linux it asks the kernel for SIGKILL when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), and everywhere a watchdog thread exits it once it has been re-parented,
so a SIGKILLed daemon leaves no training behind. The run row the dead daemon left `running` is closed
as failed ("interrupted") when the next scheduler starts (`close_interrupted_runs`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from adapters import artifacts
from adapters.artifacts import sweep_temp
from daemon.settings import Settings
from daemon.training.cycle import child_main
from daemon.training.messages import CycleOutcome, Progress, parse
from storage import registry
from storage.db import session_scope, write_patiently
from storage.errors import DatabaseUnavailable
from storage.lease import DEFAULT_TTL_S, exclusive_training, owner_tag
from storage.models import AdapterVersion, TrainingRun, as_utc, utcnow

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
INTERRUPTED = "interrupted: the process that ran it ended before the run finished"
LEASE_TAKEN = ("the training lease was taken by another process while this one could not renew it (database "
               "unreachable for longer than the lease); stopped, no version kept")

# spawn, not fork: the daemon has threads (Kafka IO, uvicorn, the scorer) that fork would copy mid-state.
_CTX = mp.get_context("spawn")

ChildTarget = Callable[[Settings, int, str, MpEvent, Connection], None]
"""The child's entry point (a module-level function: spawn pickles it by name). Tests pass failing ones."""


class TrainerProcess:
    """Runs one training cycle at a time in a spawned child."""

    def __init__(self, settings: Settings, engine: Engine, *, target: ChildTarget = child_main,
                 lease_ttl_s: float = DEFAULT_TTL_S) -> None:
        self._settings = settings
        self._engine = engine
        self._target = target
        self._lease_ttl_s = lease_ttl_s
        self._stop = _CTX.Event()  # tells the child to stop: shutdown, or the lease was lost
        self._shutdown = threading.Event()
        self._lease_lost = threading.Event()

    def request_stop(self) -> None:
        """Ask a running child to stop at its next step (graceful shutdown)."""
        self._shutdown.set()
        self._stop.set()

    def _on_lease_lost(self) -> None:
        self._lease_lost.set()
        self._stop.set()

    def run(self, trigger: str, *, on_progress: Callable[[dict[str, Any]], None] | None = None,
            grace_s: float | None = None) -> CycleOutcome:
        """Run one cycle; blocks until the child is done. Never raises for a failed training.

        An exception in the caller's thread while it waits (a second Ctrl-C, a failing `on_progress`) stops
        the child (grace period, then SIGKILL), settles the run row and is raised again: no child is left
        training unattended and no row stays `running`. Another process training on this database
        (`storage.lease.exclusive_training`) makes this one a `skipped` run that starts no child; another
        process that takes the lease while this one could not renew it stops this run (`cancelled`)."""
        for event in (self._stop, self._shutdown, self._lease_lost):
            event.clear()  # before the row exists: a stop asked from here on reaches this run
        with exclusive_training(self._engine, self._lease_ttl_s, on_lost=self._on_lease_lost) as mine:
            if mine:
                return self._run(trigger, on_progress, grace_s)
        reason = "another process is training on this database; this trigger is skipped"
        with session_scope(self._engine) as s:
            run = registry.start_run(session=s, trigger=trigger, status="skipped", reason=reason)
            run_id = run.id
        assert run_id is not None
        log.warning("training run %d (%s) skipped: %s", run_id, trigger, reason)
        return CycleOutcome(run_id=run_id, trigger=trigger, status="skipped", error=reason)

    def _run(self, trigger: str, on_progress: Callable[[dict[str, Any]], None] | None,
             grace_s: float | None) -> CycleOutcome:
        with session_scope(self._engine) as s:
            run = registry.start_run(session=s, trigger=trigger)
            run.metrics = {"owner": owner_tag()}  # lets the next start-up tell an interrupted run from a live one
            run_id = run.id
        assert run_id is not None
        parent_conn, child_conn = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(
            target=child_entry, name=f"ranktune-train-{run_id}",
            args=(self._target, os.getpid(), self._settings, run_id, trigger, self._stop, child_conn),
        )
        log.info("training run %d (%s) starting in a child process", run_id, trigger)
        grace = self._settings.shutdown_grace_s if grace_s is None else grace_s
        try:
            proc.start()
            child_conn.close()
            result = self._wait(proc, parent_conn, on_progress, grace)
        except BaseException:
            self._shutdown.set()  # the caller gives up: settling must not wait for the database forever
            self._stop.set()
            if proc.is_alive():
                _kill_after(proc, grace)
            parent_conn.close()
            self._settle(CycleOutcome(run_id=run_id, trigger=trigger, status="cancelled",
                                      error="the process waiting for it was interrupted; no version kept"))
            raise
        parent_conn.close()
        if result is None:
            status, error = "failed", f"training process died with exit code {proc.exitcode} before reporting"
            if self._stop.is_set():
                status, error = "cancelled", "stopped by shutdown before it finished; no version kept"
            log.error("training run %d %s: %s", run_id, status, error)
            sweep_temp(self._settings.storage.artifacts_dir)
            result = CycleOutcome(run_id=run_id, trigger=trigger, status=status, error=error)
        if self._lease_lost.is_set() and result.status == "cancelled":
            result = result.model_copy(update={"error": LEASE_TAKEN})
        self._settle(result)
        return result

    def _settle(self, outcome: CycleOutcome) -> None:
        """Make the registry agree with how the run ended, whatever the child could write: close its row if
        it is still `running` (the child died, or could not reach the database), and remove the version
        folders it wrote that no registry row names. An unreachable database is waited for until it answers
        or a shutdown is asked; then the row stays `running` until the next start-up closes it. A run the
        lease's loss stopped gets that reason, which the child, seeing only its stop event, could not give."""
        root, run_id = self._settings.storage.artifacts_dir, outcome.run_id

        def settle(s: Session) -> list[str]:
            run = s.get(TrainingRun, run_id)
            if run is not None and run.status == "running":
                status = "failed" if outcome.status == "running" else outcome.status
                registry.finish_run(session=s, run_id=run_id, status=status, error=outcome.error)
            elif run is not None and run.status == "cancelled" and outcome.error == LEASE_TAKEN:
                run.error = LEASE_TAKEN
            written = artifacts.versions_of_run(root, run_id)
            known = set(s.execute(select(col(AdapterVersion.version)).where(col(AdapterVersion.version).in_(written)))
                        .scalars()) if written else set()
            return [v for v in written if v not in known]

        try:
            orphans = write_patiently(self._engine, settle, what=f"record how training run {run_id} ended",
                                      patience_s=None, should_stop=self._shutdown.is_set)
        except DatabaseUnavailable as exc:
            log.error("%s; it is closed at the next start-up", exc)
            return
        for version in orphans:
            log.warning("training run %d left version folder %s that no registry row names: removing it", run_id,
                        version)
            try:
                artifacts.remove_version(root, version)
            except OSError as exc:  # harmless where it stays: the next version name skips it
                log.error("cannot remove %s: %s", root / version, exc)

    def _wait(self, proc: Any, conn: Connection, on_progress: Callable[[dict[str, Any]], None] | None,
              grace_s: float) -> CycleOutcome | None:
        result: CycleOutcome | None = None
        stop_deadline: float | None = None
        while True:
            try:
                while conn.poll(0.2):
                    msg = parse(conn.recv_bytes())
                    if isinstance(msg, Progress):
                        if on_progress is not None:
                            on_progress(msg.event)
                    else:
                        result = msg
            except (EOFError, OSError):  # the child closed its end: it is exiting; wait here, not in a spin
                proc.join(0.2)
            except ValidationError as exc:  # a bug in the child; treated like a child that never reported
                log.error("training child sent a malformed message: %s", exc)
            if not proc.is_alive():
                proc.join()
                return result
            if self._stop.is_set():
                stop_deadline = stop_deadline or time.monotonic() + grace_s
                if time.monotonic() > stop_deadline:
                    log.warning("training child did not stop within %.0fs: killing it", grace_s)
                    _kill_after(proc, 0)
                    return result



def _kill_after(proc: Any, wait_s: float) -> None:
    """Give an asked-to-stop child `wait_s` more seconds, then SIGKILL it (it ignores SIGTERM: see
    `cycle.ignore_shutdown_signals`) and reap it."""
    proc.join(wait_s)
    if proc.is_alive():
        proc.kill()
    proc.join()


# --- the child dies with its parent ----------------------------------------------------------------
def child_entry(target: ChildTarget, parent_pid: int, settings: Settings, run_id: int, trigger: str,
                stop: MpEvent, conn: Connection) -> None:
    """The child process's first frame: tie its life to `parent_pid`, then run `target`."""
    die_with_parent(parent_pid)
    target(settings, run_id, trigger, stop, conn)


def die_with_parent(parent_pid: int, *, poll_s: float = 1.0) -> None:
    """Make this process exit when `parent_pid` dies: PR_SET_PDEATHSIG on Linux, and a watchdog thread
    that notices the re-parenting (any POSIX system, and Linux's case of the parent's thread ending)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            log.warning("prctl unavailable (%s); the watchdog thread alone ties the child to the daemon", exc)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        log.error("the daemon (pid %d) is gone: the training child exits", parent_pid)
        os._exit(1)

    threading.Thread(target=watch, name="ranktune-parent-watch", daemon=True).start()


# --- run rows left `running` ---------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_interrupted(run: TrainingRun, *, max_age_s: float) -> bool:
    """True when no process can still be running `run`: its owner on this host is gone (or is this very
    process, which has started nothing yet), or, for an owner elsewhere or unknown, it started longer
    than `max_age_s` ago."""
    owner = (run.metrics or {}).get("owner")
    host, _, pid = str(owner).rpartition(":") if owner else ("", "", "")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) == os.getpid() or not _pid_alive(int(pid))
    return utcnow() - as_utc(run.started_at) > timedelta(seconds=max_age_s)


def close_interrupted_runs(engine: Engine, settings: Settings) -> list[int]:
    """Mark the `running` rows that no process is running any more as failed ("interrupted"); returns
    their ids. Run by the scheduler role at start-up."""
    max_age_s = settings.train.max_seconds + settings.shutdown_grace_s + 300
    closed: list[int] = []
    with session_scope(engine) as s:
        for run in registry.recent_runs(session=s, limit=1000, statuses=["running"]):
            if run.id is not None and is_interrupted(run, max_age_s=max_age_s):
                registry.finish_run(session=s, run_id=run.id, status="failed", error=INTERRUPTED)
                closed.append(run.id)
    for run_id in closed:
        log.warning("training run %d was left running by a process that ended: closed as failed", run_id)
    return closed
