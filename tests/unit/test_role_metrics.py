"""What the roles feed into their process's metrics and heartbeats: drift statistics with the floors the
judgement used, training outcomes and gate verdicts, the champion and reconciles, the scorer's and the
scheduler's heartbeats."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from adapters.gate import GateDecision
from daemon.app import Application
from daemon.health import Health
from daemon.metrics import Metrics
from daemon.serving.control import Reconciler, registered_loader
from daemon.serving.scorer import Scorer
from daemon.settings import Settings
from daemon.training.drift import DriftMonitor
from daemon.training.messages import CycleOutcome, CycleSummary, GateVerdict
from daemon.training.schedule import RetrainScheduler, TrainingCoordinator
from storage import registry
from storage.db import session_scope
from storage.models import DriftReport
from tests.fixtures.ingest import wait_until
from tests.unit.test_drift import WINDOW, lexical_score, store, traffic


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _app(tmp_path: Path, roles: list[str]) -> Application:
    settings = Settings.load(storage_database_url=f"sqlite:///{tmp_path / 'r.db'}", ops_port=0)
    return Application(settings, roles)  # type: ignore[arg-type]  # not started: only its observers are used


def test_drift_metrics_show_each_statistic_and_the_floor_it_was_judged_with(sqlite_engine: Engine,
                                                                            tmp_path: Path) -> None:
    records = traffic(5, 3 * WINDOW, drift_at=2 / 3)
    store(sqlite_engine, records)
    seen: list[tuple[DriftReport, dict[str, float]]] = []
    app = _app(tmp_path, ["scheduler"])
    monitor = DriftMonitor(Settings(), sqlite_engine, lexical_score,
                           on_report=lambda r, f: (seen.append((r, dict(f))), app._observe_drift(r, f)))
    report = monitor.check()
    assert report.fired and len(seen) == 1
    floors = seen[0][1]
    assert set(floors) >= {"term_js", "unseen_item_share", "unseen_term_share", "score_psi"}
    judged = [re.match(r"(\w+) [-\d.]+ > [\d.]+\+([\d.]+)", reason) for reason in report.reasons]
    assert len([j for j in judged if j]) >= 3, report.reasons
    for j in filter(None, judged):  # e.g. "term_js 0.412 > 0.10+0.031": the exported floor is the one judged
        assert floors[j.group(1)] == pytest.approx(float(j.group(2)), abs=5e-4), j.group(0)
    m = app.metrics
    assert _value(m, "ranktune_drift_statistic", statistic="term_js") == pytest.approx(report.term_js)
    assert _value(m, "ranktune_drift_noise_floor", statistic="score_psi") == pytest.approx(floors["score_psi"])
    assert _value(m, "ranktune_drift_checks_total", outcome="fired") == 1.0
    assert _value(m, "ranktune_drift_checks_total", outcome="quiet") == 0.0
    assert _value(m, "ranktune_drift_last_check_timestamp_seconds") == pytest.approx(report.created_at.timestamp())


def test_training_metrics_count_outcomes_and_keep_the_last_runs_figures(sqlite_engine: Engine,
                                                                        tmp_path: Path) -> None:
    app = _app(tmp_path, ["scheduler"])
    app.engine = sqlite_engine  # what `run()` sets; the run row gives the pairs/s
    with session_scope(sqlite_engine) as s:
        run_id = registry.start_run(session=s, trigger="drift").id
        registry.finish_run(session=s, run_id=run_id, status="succeeded", steps=40, seconds=12.0, examples_per_s=875.5)
    assert run_id is not None
    decision = GateDecision(passed=False, candidate_ndcg=0.70, champion_ndcg=0.71, ndcg_gain=-0.01,
                            reasons=["no gain"])
    summary = CycleSummary(device="cpu", quantization="nf4", artifact_path="x", metrics={}, n_train=10, n_holdout=5,
                           best_step=30, steps=40, early_stopped=False, seconds=12.0)
    app._observe_run(CycleOutcome(run_id=run_id, trigger="drift", status="succeeded", candidate_version="v0001",
                                  gate=GateVerdict(compared_with="base", decision=decision), summary=summary), 14.5)
    app._observe_run(CycleOutcome(run_id=run_id + 1, trigger="schedule", status="failed", error="boom"), 3.0)
    m = app.metrics
    assert _value(m, "ranktune_training_runs_total", status="succeeded") == 1.0
    assert _value(m, "ranktune_training_runs_total", status="failed") == 1.0
    assert _value(m, "ranktune_training_duration_seconds_count") == 2.0
    assert _value(m, "ranktune_training_duration_seconds_sum") == 17.5
    assert _value(m, "ranktune_training_steps") == 40.0  # the failed run changes neither
    assert _value(m, "ranktune_training_pairs_per_second") == 875.5
    assert _value(m, "ranktune_gate_verdicts_total", outcome="failed") == 1.0
    assert _value(m, "ranktune_gate_verdicts_total", outcome="passed") == 0.0


def test_an_ingest_only_process_registers_no_scorer_or_training_metrics(tmp_path: Path) -> None:
    text = _app(tmp_path, ["ingest"]).metrics.render().decode()
    assert 'ranktune_process_info{roles="ingest"} 1.0' in text
    assert "ranktune_ready" not in text and "ranktune_training_runs" not in text and "ranktune_drift" not in text
    full = _app(tmp_path, ["serve"]).metrics.render().decode()
    assert "ranktune_ready" in full and "ranktune_drift" not in full


def test_the_reconciler_exports_the_champion_and_counts_its_outcomes(
        serving_ranker: Any, sqlite_engine: Engine, artifacts_dir: Path,
        make_versions: Callable[..., list[str]]) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    metrics = Metrics()
    scorer = Scorer(serving_ranker, loader=registered_loader(sqlite_engine, artifacts_dir), metrics=metrics)
    scorer.start()
    scorer.mark_ready()
    try:
        rec = Reconciler(sqlite_engine, scorer, interval_s=3600)
        assert rec.sync() == "base"
        assert _value(metrics, "ranktune_champion_info", version="base") == 1.0
        assert _value(metrics, "ranktune_reconciles_total", outcome="unchanged") == 1.0
        with session_scope(sqlite_engine) as s:
            registry.promote(session=s, version=v1, actor="test")
        assert rec.sync() == v1
        assert _value(metrics, "ranktune_reconciles_total", outcome="swapped") == 1.0
        assert _value(metrics, "ranktune_champion_info", version=v1) == 1.0
        assert _value(metrics, "ranktune_active_adapter_info", version=v1) == 1.0
    finally:
        scorer.stop()


def test_the_scorer_is_idle_without_work_and_stalls_on_a_hung_round(serving_ranker: Any, sqlite_engine: Engine,
                                                                    artifacts_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    health = Health(liveness_timeout_s=3600)
    scorer = Scorer(serving_ranker, loader=registered_loader(sqlite_engine, artifacts_dir))
    health.adopt(scorer.heartbeat, deadline_s=0.3)
    release = threading.Event()
    original = serving_ranker.score_pairs

    def hung(pairs: Any, **kw: Any) -> Any:
        release.wait(30)
        return original(pairs, **kw)

    scorer.start()
    scorer.mark_ready()
    try:
        wait_until(lambda: health.report().workers[0].state == "idle", 10, "the scorer to idle")
        monkeypatch.setattr(serving_ranker, "score_pairs", hung)
        future = scorer.submit([("red boots", "red leather boots")])
        wait_until(lambda: health.report().workers[0].state == "stalled", 10, "the hung round to stall")
        assert not health.report().ready and health.report().live
        release.set()
        assert future.result(30).version == "base"
        wait_until(lambda: health.report().ready, 10, "the scorer to recover")
    finally:
        release.set()
        scorer.stop()
    health.shutting_down()
    assert health.report().workers[0].state == "stopped"


def test_the_scheduler_beats_from_apschedulers_thread_and_is_dead_once_it_stops() -> None:
    health = Health(liveness_timeout_s=3600)
    sched = RetrainScheduler(retrain_job=lambda: None, drift_job=lambda: None, retrain_interval_s=3600,
                             drift_interval_s=3600, heartbeat_s=0.2)
    health.adopt(sched.heartbeat)
    sched.start()
    try:
        wait_until(lambda: sched.heartbeat.beats >= 2, 10, "two heartbeats")
        assert health.report().ready and set(sched.next_run_times()) == {"retrain", "drift"}
    finally:
        sched.shutdown()
    assert health.report().fatal == ("scheduler: its thread ended unexpectedly",)


def test_the_training_coordinator_is_busy_only_while_it_trains() -> None:
    health = Health(liveness_timeout_s=3600)
    started, finish = threading.Event(), threading.Event()

    def cycle(trigger: str) -> str:
        started.set()
        finish.wait(10)
        return "succeeded"

    coordinator = TrainingCoordinator(cycle, drift_cooldown_s=0)
    health.adopt(coordinator.heartbeat, deadline_s=0.2)
    assert health.report().workers[0].state == "idle"
    coordinator.request("schedule")
    assert started.wait(10)
    wait_until(lambda: health.report().workers[0].state == "stalled", 10, "a training with no progress to stall")
    coordinator.heartbeat.beat()  # a progress message of the child
    assert health.report().workers[0].state == "busy"
    finish.set()
    assert coordinator.wait_idle(10)
    assert health.report().workers[0].state == "idle" and health.report().live
