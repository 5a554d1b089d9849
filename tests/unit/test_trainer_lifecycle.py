"""#14: a training child dies with a SIGKILLed daemon, and the run row it left `running` is closed as failed
("interrupted") by the next start-up, while a run some live process still owns is left alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from daemon.settings import Settings
from daemon.training.trainer_process import INTERRUPTED, close_interrupted_runs
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import TrainingRun, utcnow
from tests.fixtures.ingest import wait_until

ROOT = Path(__file__).resolve().parents[2]

DAEMON = """
import sys
from daemon.settings import Settings
from daemon.training.trainer_process import TrainerProcess
from storage.db import make_engine
from tests.unit.training_targets import sleep_forever
settings = Settings.load(storage_database_url=sys.argv[1], storage_artifacts_dir=sys.argv[2])
TrainerProcess(settings, make_engine(sys.argv[1]), target=sleep_forever).run("manual")
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a re-parented child may wait for a reaper that never comes in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Engine, Settings]:
    url = f"sqlite:///{tmp_path / 'train.db'}"
    engine = make_engine(url)
    upgrade(engine)
    (tmp_path / "artifacts").mkdir()
    return url, engine, Settings.load(storage_database_url=url, storage_artifacts_dir=tmp_path / "artifacts")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow  # the daemon and its child import the training stack (torch): about a minute on 2 cores
@pytest.mark.timeout(240)
def test_a_training_child_dies_with_a_sigkilled_daemon(db: tuple[str, Engine, Settings], tmp_path: Path) -> None:
    url, engine, settings = db
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, url, str(tmp_path / "artifacts")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    child = 0
    try:
        pid_file = wait_until(lambda: next((tmp_path / "artifacts").glob("child-*.pid"), None), 60,
                              "the training child to start")
        child = int(wait_until(pid_file.read_text, 10, "its pid"))
        assert _running(child)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        wait_until(lambda: not _running(child), 15, "the orphaned training child to exit")
    finally:
        if daemon.poll() is None:
            daemon.kill()
        if child and _running(child):
            os.kill(child, signal.SIGKILL)  # the test started it: never leave it behind
    with session_scope(engine) as s:
        (run,) = registry.recent_runs(session=s, statuses=["running"])
        assert run.metrics["owner"] == f"{socket.gethostname()}:{daemon.pid}"
    assert close_interrupted_runs(engine, settings) == [run.id]
    with session_scope(engine) as s:
        closed = s.get(TrainingRun, run.id)
        assert closed is not None and closed.status == "failed" and closed.error == INTERRUPTED
        assert closed.finished_at is not None


def test_only_runs_no_process_can_still_be_running_are_closed(db: tuple[str, Engine, Settings]) -> None:
    _, engine, settings = db
    host = socket.gethostname()
    owners = {
        "dead_here": f"{host}:{2**22 + 12345}",  # above any pid_max default: no such process
        "mine": f"{host}:{os.getpid()}",  # this process has started nothing yet: a predecessor's row
        "alive_here": f"{host}:{os.getppid()}",  # a live process on this host (e.g. `ranktune train`)
        "elsewhere_recent": "other-host:77",
        "elsewhere_old": "other-host:78",
        "unknown_old": None,
    }
    ids: dict[str, int] = {}
    with session_scope(engine) as s:
        for name, owner in owners.items():
            run = registry.start_run(session=s, trigger="manual")
            run.metrics = {"owner": owner} if owner else {}
            if name.endswith("_old"):
                run.started_at = utcnow() - timedelta(seconds=settings.train.max_seconds + settings.shutdown_grace_s
                                                      + 301)
            assert run.id is not None
            ids[name] = run.id
        done = registry.start_run(session=s, trigger="manual", status="succeeded")
    closed = close_interrupted_runs(engine, settings)
    assert sorted(closed) == sorted(ids[n] for n in ("dead_here", "mine", "elsewhere_old", "unknown_old"))
    with session_scope(engine) as s:
        assert {r.id for r in registry.recent_runs(session=s, statuses=["running"])} == {
            ids["alive_here"], ids["elsewhere_recent"]}
        assert s.get(TrainingRun, done.id).status == "succeeded"  # type: ignore[union-attr]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow  # the child imports the training stack
@pytest.mark.timeout(240)
def test_an_exception_while_waiting_kills_the_child_and_closes_its_row(db: tuple[str, Engine, Settings]) -> None:
    """A failing progress callback (or a second Ctrl-C) in the waiting thread: the child is stopped, then
    killed after the grace period, the row is closed `cancelled`, and the exception reaches the caller."""
    from daemon.training.trainer_process import TrainerProcess
    from tests.unit.training_targets import report_then_sleep

    _url, engine, settings = db

    def on_progress(_event: dict[str, object]) -> None:
        raise RuntimeError("the caller's progress callback failed")

    with pytest.raises(RuntimeError, match="progress callback failed"):
        TrainerProcess(settings, engine, target=report_then_sleep).run("manual", on_progress=on_progress, grace_s=1)
    (pid_file,) = settings.storage.artifacts_dir.glob("child-*.pid")
    assert not _running(int(pid_file.read_text()))
    with session_scope(engine) as s:
        (run,) = registry.recent_runs(session=s, limit=5)
        assert run.status == "cancelled" and "interrupted" in (run.error or ""), run


def test_a_trigger_while_another_process_trains_is_skipped_without_a_child(db: tuple[str, Engine, Settings]) -> None:
    from daemon.training.trainer_process import TrainerProcess
    from storage.lease import exclusive_training
    from tests.unit.training_targets import sleep_forever

    url, engine, settings = db
    holder = make_engine(url)  # the other process's engine
    try:
        with exclusive_training(holder) as held:
            assert held
            outcome = TrainerProcess(settings, engine, target=sleep_forever).run("manual")
    finally:
        holder.dispose()
    assert outcome.status == "skipped" and "another process is training" in (outcome.error or "")
    assert not list(settings.storage.artifacts_dir.glob("child-*.pid"))  # no child was started
    with session_scope(engine) as s:
        (run,) = registry.recent_runs(session=s, limit=5)
        assert run.id == outcome.run_id and run.status == "skipped"


def test_the_training_child_outlives_a_sigterm_sent_to_its_process_group() -> None:
    # the parent stops it through its stop event within the grace period; a group-wide SIGTERM (systemd's
    # KillMode=control-group) killed it at once and the run was recorded failed
    code = ("import os, signal\n"
            "from daemon.training.cycle import ignore_shutdown_signals\n"
            "ignore_shutdown_signals()\n"
            "os.killpg(os.getpgid(0), signal.SIGTERM)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "print('alive')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", proc.stderr[-2000:]



def _steal_the_lease(engine: Engine) -> None:
    """What another process does once this one's lease expired: take the row for itself."""
    from sqlalchemy import update

    from storage.models import TrainingLease

    with session_scope(engine) as s:
        s.execute(update(TrainingLease).values(holder="other-host:1:thief", expires_at=utcnow() + timedelta(hours=1)))


def test_a_training_whose_lease_another_process_took_stops_and_keeps_nothing(
        db: tuple[str, Engine, Settings]) -> None:
    """The holder lost the database longer than its lease and another process took it: at the next renewal
    the run stops (child asked to stop, row `cancelled` with the reason), and the lease stays the other's."""
    import threading

    from daemon.training.trainer_process import LEASE_TAKEN, TrainerProcess
    from storage.lease import try_acquire
    from tests.unit.training_targets import train_until_stopped

    url, engine, settings = db
    outcomes = []
    trainer = TrainerProcess(settings, engine, target=train_until_stopped, lease_ttl_s=0.6)
    runner = threading.Thread(target=lambda: outcomes.append(trainer.run("manual", grace_s=30)))
    runner.start()
    root = settings.storage.artifacts_dir
    assert wait_until(lambda: bool(list(root.glob("child-*.pid"))), 120, "the child to start")
    threading.Event().wait(1.0)  # a few renewals (every 0.2 s): the run goes on while its lease holds
    assert runner.is_alive()
    _steal_the_lease(engine)
    runner.join(60)
    assert not runner.is_alive()
    (outcome,) = outcomes
    assert outcome.status == "cancelled" and outcome.error == LEASE_TAKEN
    (pid_file,) = root.glob("child-*.pid")
    assert not _running(int(pid_file.read_text()))
    with session_scope(engine) as s:
        (run,) = registry.recent_runs(session=s, limit=5)
        assert run.status == "cancelled" and run.error == LEASE_TAKEN, run
    other = make_engine(url)
    try:
        assert not try_acquire(other, "someone-else", ttl_s=60)  # the thief's lease was not released by us
    finally:
        other.dispose()

