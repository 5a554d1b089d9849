"""PostgreSQL link cuts during a real training cycle (issue #14's training case; small CPU settings).

The training child and its parent (`TrainerProcess`, as the daemon runs it) reach PostgreSQL only through
a TCP proxy; the test reads back directly. The champion is a real, promoted version. A cut while the run
trains, or over its end (the child has written its artifact and cannot register it), lets the run either
finish (row `succeeded`, its artifact and registry row) or fail cleanly (row `failed` with the reason, no
artifact folder left that the registry does not know); never a `running` row, never a raising parent.
Either way the champion is untouched, and the next run on the restored link succeeds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from adapters import artifacts
from daemon.settings import Settings
from daemon.tools.simulate import SimConfig, generate
from daemon.tools.synthetic_adapters import make_version
from daemon.training import cycle
from daemon.training.messages import CycleOutcome
from daemon.training.trainer_process import ChildTarget, TrainerProcess
from storage import registry
from storage.db import make_engine, session_scope
from storage.models import TrainingRun
from tests.faults import train_targets
from tests.faults.conftest import SMALL, ProxiedBroker, ProxiedPostgres
from tests.faults.serve import ScoreProbe, start_replicas, stop_replicas
from tests.fixtures.ingest import wait_until
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.training import store_records

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres,
              pytest.mark.broker, pytest.mark.timeout(900)]  # broker: the serve replica of the first test

# the 30 s cuts of issue #14; RANKTUNE_TEST_CUT_S shortens them for a quick local run
CUT_S = float(os.environ.get("RANKTUNE_TEST_CUT_S", "30"))
TRAINING_STARTS_S = 300.0  # model and data loading in the child, on a busy 2-core machine
RUN_ENDS_S = 600.0


@dataclass(frozen=True)
class Champion:
    version: str
    checksum: str


@pytest.fixture
def cut_db(stocked: Engine, pg_url: str, tcp_proxy: type[TcpProxy]) -> ProxiedPostgres:
    """The stocked database, and a proxy in front of it that the processes under test get."""
    assert "@127.0.0.1:5432/" in pg_url, "the proxy tests need the local PostgreSQL"
    return ProxiedPostgres(pg_url, tcp_proxy("127.0.0.1", 5432), stocked)


@pytest.fixture
def champion(cut_db: ProxiedPostgres, reference_ranker: Any, tmp_path: Path) -> Champion:
    """A promoted version in `training_settings`' artifacts folder: what a cut training must leave alone."""
    version = make_version(reference_ranker, engine=cut_db.engine, artifacts_dir=tmp_path / "artifacts", seed=14)
    with session_scope(cut_db.engine) as s:
        registry.promote(session=s, version=version, actor="test", reason="the champion before the cut")
        checksum = registry.get_version(session=s, version=version).checksum
    return Champion(version, checksum)


@pytest.fixture
def parent_engine(cut_db: ProxiedPostgres) -> Iterator[Engine]:
    """The daemon's engine: through the proxy, so the cut reaches the parent as well."""
    eng = make_engine(cut_db.url)
    yield eng
    eng.dispose()


def _train_through_cut(trainer: TrainerProcess, db: ProxiedPostgres, hold: Callable[[], object]) -> CycleOutcome:
    """Run one cycle; once the child trains (its first step: it has read its data), cut the link, `hold()`
    and restore it. Returns the outcome (`TrainerProcess.run` must not raise)."""
    training = threading.Event()

    def on_progress(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            training.set()

    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(trainer.run, "manual", on_progress=on_progress)
        assert wait_until(lambda: training.is_set() or run.done(), TRAINING_STARTS_S, "the child to train")
        assert not run.done(), run.result()  # it trains: it did not end before its first step
        db.proxy.cut()
        try:
            with session_scope(db.engine) as s:
                assert [r.status for r in registry.recent_runs(session=s, limit=1)] == ["running"]
            hold()
        finally:
            db.proxy.restore()
        return run.result(timeout=RUN_ENDS_S)


def _assert_clean(db: ProxiedPostgres, settings: Settings, outcome: CycleOutcome, champ: Champion) -> TrainingRun:
    """Finished or failed cleanly, and the champion untouched (read back directly)."""
    root = settings.storage.artifacts_dir
    with session_scope(db.engine) as s:
        run = s.get(TrainingRun, outcome.run_id)
        versions = {v.version: v.checksum for v in registry.list_versions(session=s)}
        current = registry.champion(session=s)
    assert run is not None and run.status == outcome.status, (run, outcome)
    assert run.finished_at is not None
    if run.status == "succeeded":
        assert run.candidate_version in versions
        assert artifacts.load_adapter(root, run.candidate_version, expected_checksum=versions[run.candidate_version])
    else:
        assert run.status == "failed" and run.error and outcome.error, (run.status, run.error)
        assert run.candidate_version is None and set(versions) == {champ.version}
    assert sorted(p.name for p in root.iterdir()) == sorted(versions)  # no folder the registry does not know
    assert current == champ.version and versions[champ.version] == champ.checksum
    assert artifacts.load_adapter(root, champ.version, expected_checksum=champ.checksum).state
    return run


def _assert_next_run_succeeds(settings: Settings, parent: Engine, db: ProxiedPostgres, champ: Champion) -> None:
    """After more traffic (a run that succeeded used up the stored events), a run on the restored link."""
    fresh = [r for r in generate(SimConfig(seed=6, n_items=150, n_events=1200)) if r.kind != "malformed"]
    assert store_records(db.engine, settings, fresh) > 1000
    outcome = TrainerProcess(settings, parent).run("manual")
    assert outcome.status == "succeeded", outcome.error
    _assert_clean(db, settings, outcome, champ)


def _cut_run(settings: Settings, parent: Engine, db: ProxiedPostgres, hold: Callable[[], object], *,
             target: ChildTarget = cycle.child_main) -> CycleOutcome:
    outcome = _train_through_cut(TrainerProcess(settings, parent, target=target), db, hold)
    assert db.proxy.accepted > 0  # the processes under test really went through the proxy
    print(f"\ndatabase cut during training: {outcome.status} {outcome.error or ''}")
    return outcome


def _artifact_written(root: Path, champ: Champion) -> Callable[[], bool]:
    """True once a version folder besides the champion's exists: the child is registering its candidate."""
    return lambda: any(p.name != champ.version and not p.name.startswith(".") for p in root.iterdir())


def test_a_database_cut_while_training_finishes_or_fails_cleanly_and_the_champion_stays(
    cut_db: ProxiedPostgres, champion: Champion, parent_engine: Engine, training_settings: Callable[..., Settings],
    proxied_broker: ProxiedBroker, tmp_path: Path,
) -> None:
    """Also serving: a `ranktune serve` replica on the same proxied database answers every probe during the
    cut, with the champion (scoring needs no database)."""
    settings = training_settings(cut_db.url, **SMALL)
    (replica,) = start_replicas(1, tmp_path, database_url=cut_db.url, bootstrap=proxied_broker.bootstrap,
                                artifacts_dir=settings.storage.artifacts_dir)  # stops it if it fails to start
    probes: list[ScoreProbe] = []

    def hold() -> None:
        with ScoreProbe([replica]) as probe:
            threading.Event().wait(CUT_S)
        probes.append(probe)

    try:
        assert wait_until(lambda: replica.served() == champion.version, 60, "the replica to serve the champion")
        outcome = _cut_run(settings, parent_engine, cut_db, hold)
        assert replica.proc.poll() is None, replica.log()[-3000:]
    finally:
        stop_replicas([replica])
    (probe,) = probes
    print(f"serving probes during the {CUT_S:.0f} s cut: {dict(probe.outcomes)} {dict(probe.versions)}")
    assert set(probe.outcomes) == {"200"}, probe.outcomes  # /v1/score kept answering through the cut
    assert sum(probe.outcomes.values()) >= CUT_S  # ~2 probes per second
    assert set(probe.versions) == {champion.version}  # with the champion, all along
    _assert_clean(cut_db, settings, outcome, champion)
    _assert_next_run_succeeds(settings, parent_engine, cut_db, champion)


def test_a_cut_over_the_end_of_training_is_ridden_out_and_the_candidate_registered(
    cut_db: ProxiedPostgres, champion: Champion, parent_engine: Engine, training_settings: Callable[..., Settings],
) -> None:
    settings = training_settings(cut_db.url, **SMALL)
    root = settings.storage.artifacts_dir

    def hold() -> None:
        wait_until(_artifact_written(root, champion), RUN_ENDS_S, "the candidate's artifact")
        threading.Event().wait(CUT_S)

    outcome = _cut_run(settings, parent_engine, cut_db, hold)
    run = _assert_clean(cut_db, settings, outcome, champion)
    if CUT_S < cycle.REGISTRY_PATIENCE_S:  # the child waited for the database and registered its candidate
        assert run.status == "succeeded", run.error
    _assert_next_run_succeeds(settings, parent_engine, cut_db, champion)


def test_a_cut_that_outlasts_the_childs_patience_fails_the_run_cleanly(
    cut_db: ProxiedPostgres, champion: Champion, parent_engine: Engine, training_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = training_settings(cut_db.url, **SMALL)
    caplog.set_level(logging.WARNING, logger="storage.db")
    root = settings.storage.artifacts_dir

    def hold() -> None:  # until the child gave up and the parent waits for the database to close the row
        wait_until(_artifact_written(root, champion), RUN_ENDS_S, "the candidate's artifact")
        wait_until(lambda: "cannot record how training run" in caplog.text, RUN_ENDS_S, "the parent to wait")
        assert _artifact_written(root, champion)()  # the folder the parent must remove once it can tell

    outcome = _cut_run(settings, parent_engine, cut_db, hold, target=train_targets.impatient)
    run = _assert_clean(cut_db, settings, outcome, champion)
    assert run.status == "failed" and "DatabaseUnavailable" in (run.error or ""), run.error
    _assert_next_run_succeeds(settings, parent_engine, cut_db, champion)
