"""Training in a child process, so a crash or an out-of-memory kill never takes the daemon down.

The parent records the run row (status `running`) before it starts the child, relays the child's
progress messages, and, if the child dies without reporting, marks the run failed and sweeps any
half-written artifact folder. On shutdown the parent asks the child to stop at its next step (it then
keeps nothing: no half-trained version is registered) and kills it after the grace period.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from adapters.artifacts import sweep_temp
from daemon.settings import Settings
from daemon.training.cycle import child_main
from daemon.training.messages import CycleOutcome, Progress, parse
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

# spawn, not fork: the daemon has threads (Kafka IO, uvicorn, the scorer) that fork would copy mid-state.
_CTX = mp.get_context("spawn")

ChildTarget = Callable[[Settings, int, str, MpEvent, Connection], None]
"""The child's entry point (a module-level function: spawn pickles it by name). Tests pass failing ones."""


class TrainerProcess:
    """Runs one training cycle at a time in a spawned child."""

    def __init__(self, settings: Settings, engine: Engine, *, target: ChildTarget = child_main) -> None:
        self._settings = settings
        self._engine = engine
        self._target = target
        self._stop = _CTX.Event()

    def request_stop(self) -> None:
        """Ask a running child to stop at its next step (graceful shutdown)."""
        self._stop.set()

    def run(self, trigger: str, *, on_progress: Callable[[dict[str, Any]], None] | None = None,
            grace_s: float | None = None) -> CycleOutcome:
        """Run one cycle; blocks until the child is done. Never raises for a failed training."""
        with session_scope(self._engine) as s:
            run_id = registry.start_run(session=s, trigger=trigger).id
        assert run_id is not None
        self._stop.clear()
        parent_conn, child_conn = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(
            target=self._target, name=f"ranktune-train-{run_id}",
            args=(self._settings, run_id, trigger, self._stop, child_conn),
        )
        log.info("training run %d (%s) starting in a child process", run_id, trigger)
        proc.start()
        child_conn.close()
        result = self._wait(proc, parent_conn, on_progress, self._settings.shutdown_grace_s if grace_s is None
                            else grace_s)
        parent_conn.close()
        if result is None:
            status, error = "failed", f"training process died with exit code {proc.exitcode} before reporting"
            if self._stop.is_set():
                status, error = "cancelled", "stopped by shutdown before it finished; no version kept"
            log.error("training run %d %s: %s", run_id, status, error)
            with session_scope(self._engine) as s:
                registry.finish_run(session=s, run_id=run_id, status=status, error=error)
            sweep_temp(self._settings.storage.artifacts_dir)
            return CycleOutcome(run_id=run_id, trigger=trigger, status=status, error=error)
        return result

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
            except (EOFError, OSError):
                pass  # the child closed its end: it is exiting
            except ValidationError as exc:  # a bug in the child; treated like a child that never reported
                log.error("training child sent a malformed message: %s", exc)
            if not proc.is_alive():
                proc.join()
                return result
            if self._stop.is_set():
                stop_deadline = stop_deadline or time.monotonic() + grace_s
                if time.monotonic() > stop_deadline:
                    log.warning("training child did not stop within %.0fs: terminating it", grace_s)
                    proc.terminate()
                    proc.join(10)
                    if proc.is_alive():
                        proc.kill()
                        proc.join()
                    return result

