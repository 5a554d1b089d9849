"""The daemon end to end, against the real broker: drift -> retrain -> gate -> promote -> hot-swap.

The scheduler's jobs are called directly (their intervals are set to an hour) so each step happens at a
known point in the traffic; the apscheduler wiring itself is covered in tests/unit/test_schedule.py.
Training is the slow part, so these tests use SQLite; every storage path they use is also tested on
PostgreSQL elsewhere.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from adapters import artifacts
from adapters.ranking_metrics import ndcg_at_k
from daemon.app import Application
from daemon.tools.broker import EmbeddedBroker, free_port
from daemon.tools.demo_config import CONTINUAL_TRAINING, DemoConfig
from daemon.tools.simulate import SimRecord, eval_judgements, generate
from storage import registry
from storage.db import make_engine, session_scope
from tests.fixtures.ingest import IngestCase, wait_until
from tests.fixtures.training import small_training
from tests.integration import crash_targets

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.broker]

TOKEN = "daemon-test-token"
SIM = DemoConfig().sim()  # the demo's shop (pacing is the sink's: the test produces as fast as it can)


def _feedback(records: list[SimRecord]) -> int:
    return sum(1 for r in records if r.kind == "feedback")


@pytest.fixture(scope="module")
def traffic() -> tuple[list[SimRecord], list[SimRecord], list[SimRecord]]:
    """(first pre-drift part, second pre-drift part, post-drift part) of one simulated shop."""
    recs = [r for r in generate(SIM) if r.kind != "malformed"]
    pre = [r for r in recs if r.phase == "pre"]
    post = [r for r in recs if r.phase == "post"]
    first_feedback = next(i for i, r in enumerate(pre) if r.kind == "feedback")
    cut = first_feedback + (len(pre) - first_feedback) * 2 // 3
    return pre[:cut], pre[cut:], post


@pytest.fixture
def daemon(broker: EmbeddedBroker, ingest_case: Callable[..., IngestCase], tmp_path: Path
           ) -> Iterator[Callable[..., tuple[Application, IngestCase]]]:
    apps: list[tuple[Application, threading.Thread]] = []

    def start(**overrides: Any) -> tuple[Application, IngestCase]:
        target = overrides.pop("trainer_target", None)
        case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'ranktune.db'}", **small_training(
            storage_artifacts_dir=tmp_path / "artifacts", api_port=free_port(), api_token=TOKEN,
            kafka_control_topic=f"{tmp_path.name[-20:]}.control", retrain_interval_s=3600, drift_interval_s=3600,
            retrain_min_events=100, drift_window_events=1500, drift_min_events=300, drift_cooldown_s=0,
            scorer_reconcile_interval_s=2, kafka_topic_partitions=1, **overrides))
        case.create_topics()
        app = Application(case.settings, **({"trainer_target": target} if target else {}))
        thread = threading.Thread(target=app.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        assert app.started.wait(120), "the daemon did not start"
        apps.append((app, thread))
        return app, case

    yield start
    for app, thread in apps:
        app.stop()
        thread.join(120)


def _ingest(case: IngestCase, records: list[SimRecord], already: int) -> int:
    case.produce(records)
    total = already + _feedback(records)
    wait_until(lambda: case.count() >= total, 120, f"{total} stored events")
    return total


def _ndcg(url: str, queries: list[dict[str, Any]]) -> tuple[float, set[str]]:
    values, versions = [], set()
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries:
            body = {"query": q["query"], "items": [{"item_id": i["item_id"], "text": i["text"]} for i in q["items"]]}
            doc = client.post("/v1/score", json=body).raise_for_status().json()
            versions.add(doc["adapter_version"])
            grade = {i["item_id"]: i["grade"] for i in q["items"]}
            ranked = [grade[r["item_id"]] for r in doc["items"]]
            values.append(ndcg_at_k(np.arange(len(ranked), 0, -1, dtype=float), ranked, 10))
    return float(np.mean(values)), versions


@pytest.mark.timeout(900)
def test_drift_triggers_a_retrain_that_serves_better_rankings(daemon, traffic):
    # The demo's path: the zero-shot base serves until the shoppers' taste changes; the drift job notices,
    # retrains with the demo's budget (CONTINUAL_TRAINING); the gate decides, and the promoted result must
    # rank unseen post-drift queries better on ground truth.
    first, second, post = traffic
    app, case = daemon(**CONTINUAL_TRAINING)
    assert app.serve is not None and app.coordinator is not None and app.drift_check is not None
    post_queries = eval_judgements(SIM, "post", n_queries=24, candidates=20)
    pre_champion = registry.BASE

    n = _ingest(case, first + second, 0)  # one distribution: drift must stay quiet
    app.drift_check()
    with session_scope(app.engine) as s:
        quiet = registry.recent_drift(session=s, limit=1)[0]
    assert not quiet.fired, quiet.reasons
    assert quiet.n_recent > 0 and not app.coordinator.busy

    ndcg_before, served = _ndcg(app.serve.url, post_queries)
    assert served == {pre_champion}
    _ingest(case, post, n)  # the shoppers' taste changes
    app.drift_check()
    with session_scope(app.engine) as s:
        fired = registry.recent_drift(session=s, limit=1)[0]
    assert fired.fired, fired.reasons
    assert any("retrain requested: started" in r for r in fired.reasons)
    assert app.coordinator.wait_idle(700)
    with session_scope(app.engine) as s:
        run = registry.recent_runs(session=s, limit=1)[0]
        champion = registry.champion(session=s)
        audit = registry.audit_log(session=s, limit=5)
    assert run.trigger == "drift" and run.status == "succeeded", run.error
    gate = run.gate or {}
    candidate = run.candidate_version
    assert gate["compared_with"] == pre_champion  # judged against what shoppers were getting
    assert gate["min_detectable_gain"] > 0  # the gate says how small a gain its holdout can confirm
    if gate["passed"]:  # promoted and hot-swapped on its own
        assert champion == candidate != pre_champion
        assert audit[0].action == "auto_promote" and audit[0].to_version == champion
    else:
        # Refused. The only check allowed to fail is the holdout's power: a positive gain that ~80 pages
        # of position-biased clicks cannot confirm at 90% (never a loss, never a regression). An operator
        # who trusts the candidate promotes it, through the same path as the API's promote button.
        assert champion == pre_champion
        failed = [r for r in gate["reasons"] if r.startswith("fail:")]
        assert failed and all(r.startswith("fail: gain > 0 in") for r in failed), gate["reasons"]
        assert gate["ndcg_gain"] > 0, gate["reasons"]
        resp = httpx.post(f"{app.serve.url}/v1/adapters/{candidate}/promote", timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"}, json={"reason": "gate underpowered"})
        assert resp.status_code == 200, resp.text
        champion = candidate
    wait_until(lambda: app.serve.scorer.version == champion, 30, "the hot-swap")
    ndcg_after, served = _ndcg(app.serve.url, post_queries)
    assert served == {champion}
    # judged on ground truth the gate never saw: the simulator's hidden grades for unseen post-drift queries
    prop = (run.metrics or {}).get("propensity") or {}
    print(f"post-drift NDCG@10 (ground truth) {ndcg_before:.4f} -> {ndcg_after:.4f}; gate "
          f"{'passed' if gate['passed'] else 'refused'}: gain {gate['ndcg_gain']:+.4f}, "
          f"{gate['bootstrap_p_gain']:.1%} of resamples, smallest detectable gain {gate['min_detectable_gain']:.4f}, "
          f"off-page change {gate['offpage_delta']:+.4f}; "
          f"run {run.seconds:.0f}s, best step {run.best_step}/{run.steps}, {run.n_train} training and "
          f"{run.n_holdout} holdout pages, position bias {prop.get('method')} "
          f"{[round(v, 2) for v in prop.get('estimated', [])[:4]]}")
    assert ndcg_after > ndcg_before, (ndcg_before, ndcg_after)


@pytest.mark.timeout(400)
def test_a_training_failure_is_recorded_and_the_daemon_keeps_ingesting_and_serving(daemon, traffic):
    first, second, _ = traffic
    app, case = daemon(trainer_target=crash_targets.die_mid_write)
    assert app.serve is not None and app.coordinator is not None
    n = _ingest(case, first, 0)
    app.retrain_job()
    assert app.coordinator.wait_idle(120)
    with session_scope(app.engine) as s:
        run = registry.recent_runs(session=s, limit=1)[0]
        assert run.status == "failed" and "exit code 137" in (run.error or "")
        assert registry.list_versions(session=s) == [] and registry.champion(session=s) == "base"
    _ingest(case, second, n)  # still ingesting
    body = {"query": "red boots", "items": [{"item_id": "a", "text": "red boots"}, {"item_id": "b", "text": "tent"}]}
    resp = httpx.post(f"{app.serve.url}/v1/score", json=body, timeout=30)
    assert resp.status_code == 200 and resp.json()["adapter_version"] == "base"
    metrics = httpx.get(f"{app.serve.url}/metrics", timeout=10).text
    assert 'ranktune_training_runs_total{status="failed"} 1.0' in metrics


@pytest.mark.timeout(400)
def test_sigterm_during_training_exits_cleanly(broker: EmbeddedBroker, ingest_case: Callable[..., IngestCase],
                                              tmp_path: Path, traffic):
    first, _, _ = traffic
    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'ranktune.db'}", **small_training(
        storage_artifacts_dir=tmp_path / "artifacts", api_port=free_port(), retrain_interval_s=2,
        retrain_min_events=100,
        drift_interval_s=3600, train_max_seconds=600, train_epochs=20, shutdown_grace_s=20,
        kafka_control_topic=f"{tmp_path.name[-20:]}.control", kafka_topic_partitions=1))
    case.create_topics()
    case.produce(first)
    proc = case.start("run")
    engine = make_engine(case.settings.storage.sqlalchemy_url)

    def running() -> bool:
        try:
            with session_scope(engine) as s:
                return any(r.status == "running" for r in registry.recent_runs(session=s, limit=3))
        except Exception:
            return False

    wait_until(running, 180, "a training run to start")
    proc.signal(signal.SIGTERM)
    assert proc.wait(120) == 0, proc.log()[-3000:]
    with session_scope(engine) as s:
        run = registry.recent_runs(session=s, limit=1)[0]
        versions = registry.list_versions(session=s)
    engine.dispose()
    assert run.status == "cancelled", (run.status, run.error)
    for v in versions:  # whatever was registered is complete and verifies
        artifacts.load_adapter(case.settings.storage.artifacts_dir, v.version, expected_checksum=v.checksum)
    assert not list(case.settings.storage.artifacts_dir.glob(".tmp-*")), "half-written version left behind"
    assert case.count() == _feedback(first), "events lost"
    committed = case.committed()
    assert committed and committed == {tp: off for tp, off in case.next_offsets().items() if tp in committed}
