"""Training-child entry points for the life-cycle tests (spawn imports this module by name)."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent

from daemon.settings import Settings


def sleep_forever(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """A training that never ends by itself: writes its pid, then waits (ignoring the stop event)."""
    (settings.storage.artifacts_dir / f"child-{run_id}.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.5)


def report_then_sleep(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """Writes its pid, reports one progress event, then never ends by itself (ignoring the stop event)."""
    from daemon.training.messages import Progress, report

    (settings.storage.artifacts_dir / f"child-{run_id}.pid").write_text(str(os.getpid()))
    report(conn, Progress(event={"event": "step", "step": 1, "total_steps": 10}))
    while True:
        time.sleep(0.5)


def train_until_stopped(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """Writes its pid and trains until its stop event is set, then closes its row as the real cycle does
    (`cancelled`, "stopped by shutdown") and reports it."""
    from daemon.training.messages import CycleOutcome, report
    from storage import registry
    from storage.db import make_engine, session_scope

    (settings.storage.artifacts_dir / f"child-{run_id}.pid").write_text(str(os.getpid()))
    while not stop.wait(0.1):
        pass
    error = "stopped by shutdown; no version kept"
    engine = make_engine(settings.storage.sqlalchemy_url)
    with session_scope(engine) as s:
        registry.finish_run(session=s, run_id=run_id, status="cancelled", error=error)
    engine.dispose()
    report(conn, CycleOutcome(run_id=run_id, trigger=trigger, status="cancelled", error=error))
    conn.close()
