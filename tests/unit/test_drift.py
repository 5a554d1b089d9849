"""Drift job on simulated traffic: quiet on identical distributions, fires after the simulator's drift point."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from adapters.product_text import product_text
from daemon.settings import Settings
from daemon.tools.simulate import SimConfig, SimRecord, generate
from daemon.training.drift import DriftMonitor, drift_job
from daemon.training.drift_stats import loo_unseen_shares, null_floor, psi, terms
from storage import events_repo, registry
from storage.db import session_scope

WINDOW = Settings().drift.window_events  # the defaults are what these tests calibrate
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def lexical_score(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """A cheap deterministic champion: share of query terms found in the product text."""
    out = []
    for query, text in pairs:
        q, t = set(terms(query)), set(terms(text))
        out.append(len(q & t) / max(1, len(q)))
    return out


def settings(**kw: Any) -> Settings:
    return Settings(**kw)


def traffic(seed: int, n_events: int, drift_at: float | None = None) -> list[SimRecord]:
    return list(generate(SimConfig(seed=seed, n_items=300, n_events=n_events, drift_at=drift_at)))


def store(engine: Engine, records: Sequence[SimRecord], start: int = 0) -> int:
    """Write catalog and feedback records as the consumer would; `ingested_at` grows by 1 ms per record.

    Returns the next sequence number, to continue a stream in a later call.
    """
    feedback, catalog = [], []
    for n, r in enumerate(records, start):
        p = dict(r.payload or {})
        ingested = T0 + timedelta(milliseconds=n)
        ts = datetime.fromisoformat(p.pop("ts"))
        if r.kind == "catalog":
            catalog.append({**p, "ts": ts, "updated_at": ingested})
        elif r.kind == "feedback":
            feedback.append({
                "event_id": p["event_id"], "ts": ts, "query": p["query"], "item_id": p["item_id"],
                "action": p["action"], "item_text": p.get("item_text"), "position": p.get("position"),
                "request_id": p.get("request_id"), "session_hash": p.get("session_id"), "user_hash": None,
                "topic": "ranktune.feedback", "partition": 0, "offset": n, "ingested_at": ingested,
            })
    with session_scope(engine) as s:
        if catalog:
            events_repo.upsert_catalog(session=s, rows=catalog)
        for i in range(0, len(feedback), 500):
            events_repo.insert_feedback(session=s, rows=feedback[i:i + 500])
    return start + len(records)


def catalog_text_of(records: Sequence[SimRecord]) -> dict[str, str]:
    return {r.payload["item_id"]: product_text(r.payload) for r in records if r.kind == "catalog" and r.payload}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_identical_traffic_stays_quiet(engine: Engine, seed: int) -> None:
    store(engine, traffic(seed, 2 * WINDOW))
    report = DriftMonitor(settings(), engine, lexical_score, seed=seed).check()
    assert report.champion_version == registry.BASE
    assert (report.n_reference, report.n_recent) == (WINDOW, WINDOW)
    assert not report.fired, report.reasons
    assert report.score_psi is not None and report.term_js is not None
    assert report.recent_ndcg is not None and report.reference_ndcg is not None
    with session_scope(engine) as s:
        assert [r.id for r in registry.recent_drift(session=s)] == [report.id]


def test_fires_after_the_drift_point_and_not_before(engine: Engine) -> None:
    records = traffic(5, 3 * WINDOW, drift_at=2 / 3)
    first_post = next(i for i, r in enumerate(records) if r.phase == "post")
    monitor = DriftMonitor(settings(), engine, lexical_score)  # text from the catalog in the database

    n = store(engine, records[:first_post])
    before = monitor.check()
    assert not before.fired, before.reasons

    store(engine, records[first_post:], start=n)
    after = monitor.check()
    assert after.fired
    fired = {reason.split()[0] for reason in after.reasons}
    assert {"term_js", "unseen_term_share", "unseen_item_share"} <= fired  # new slang, brands, items
    assert "score_psi" in fired
    assert after.unseen_term_share is not None and before.unseen_term_share is not None
    assert after.unseen_term_share > before.unseen_term_share + 0.3


def test_drift_is_not_judged_while_the_scorer_serves_another_version_than_the_champion(engine: Engine) -> None:
    # drifted traffic that fires when the champion scores it; a scorer still on another version (a late or
    # refused swap) must not be judged against the champion's figures
    records = traffic(5, 3 * WINDOW, drift_at=2 / 3)
    store(engine, records)
    calls: list[int] = []
    served = ["v0009"]

    def counting_score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        calls.append(len(pairs))
        return lexical_score(pairs)

    monitor = DriftMonitor(settings(), engine, counting_score, served_version=lambda: served[0])
    report = monitor.check()
    assert not report.fired and calls == []
    assert report.reasons == ["not judged: the scorer serves v0009, not the champion base (a swap is pending)"]
    served[0] = registry.BASE
    assert monitor.check().fired and calls  # the same windows, judged once the scorer serves the champion

    def swapping_score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        served[0] = "v0010"  # a swap lands while the check scores
        return lexical_score(pairs)

    served[0] = registry.BASE
    late = DriftMonitor(settings(), engine, swapping_score, served_version=lambda: served[0]).check()
    assert not late.fired and late.reasons[0].startswith("not judged: the scorer serves v0010")


def test_not_enough_recent_events_is_reported_not_fired(engine: Engine) -> None:
    records = traffic(4, WINDOW + 100)
    store(engine, records)
    calls: list[int] = []

    def counting_score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        calls.append(len(pairs))
        return lexical_score(pairs)

    report = DriftMonitor(settings(), engine, counting_score).check()
    assert not report.fired
    assert report.reasons == ["not enough recent events (100 < 500)"]
    assert report.n_recent == 100
    assert calls == []  # nothing scored for a window too small to judge


@pytest.mark.parametrize("drifted", [False, True])
def test_drift_job_requests_a_retrain_only_when_fired(engine: Engine, drifted: bool) -> None:
    records = traffic(6, 2 * WINDOW, drift_at=0.5 if drifted else None)
    store(engine, records)
    requests: list[str] = []

    def request_retrain(trigger: str) -> str:
        requests.append(trigger)
        return "cooldown"

    monitor = DriftMonitor(settings(), engine, lexical_score, catalog_text_of(records).get)
    drift_job(monitor, request_retrain)()
    assert requests == (["drift"] if drifted else [])
    with session_scope(engine) as s:
        (row,) = registry.recent_drift(session=s)
    assert row.fired is drifted
    assert ("retrain requested: cooldown" in row.reasons) is drifted


def _adapter_champion(engine: Engine, metrics: dict[str, Any]) -> tuple[list[SimRecord], datetime]:
    """Three windows of traffic stored, and a champion v0001 trained on the first two (with `metrics`);
    returns the records and the training run's data cutoff."""
    from storage.models import AdapterVersion

    records = traffic(7, 3 * WINDOW)
    feedback_at = [i for i, r in enumerate(records) if r.kind == "feedback"]
    store(engine, records)
    cutoff = T0 + timedelta(milliseconds=feedback_at[2 * WINDOW - 1])
    with session_scope(engine) as s:
        run = registry.start_run(session=s, trigger="schedule")
        assert run.id is not None
        registry.finish_run(session=s, run_id=run.id, status="succeeded", data_cutoff=cutoff)
        registry.add_version(session=s, version=AdapterVersion(
            version="v0001", base_model="m", quantization="none", status="candidate", artifact_path="x",
            checksum="0", training_run_id=run.id, created_at=T0, metrics=metrics))
        registry.promote(session=s, version="v0001", actor="test")
    return records, cutoff


def test_adapter_champion_is_judged_against_its_training_window(engine: Engine) -> None:
    _adapter_champion(engine, {"candidate": {"holdout": {"ndcg10": 0.99, "n_groups": 50}}})
    report = DriftMonitor(settings(), engine, lexical_score).check()
    assert (report.champion_version, report.n_reference, report.n_recent) == ("v0001", WINDOW, WINDOW)
    assert report.reference_ndcg == pytest.approx(0.99)
    # inputs did not move, but the champion falls far short of its (made-up) holdout NDCG
    assert [r.split()[0] for r in report.reasons] == ["ndcg10_drop"]


def test_leave_one_page_out_unseen_shares() -> None:
    # page p3's item and p2's term "kicks" occur on no other page; p1's terms and items recur
    queries = ["red shoe", "red shoe", "red kicks", "red shoe", "red shoe"]
    items = ["a", "b", "a", "b", "z"]
    units = ["p1", "p1", "p2", "p3", "p3"]
    item_share, term_share = loo_unseen_shares(queries, items, units)
    assert item_share == pytest.approx(1 / 5)
    assert term_share == pytest.approx(1 / 5)


def test_null_floor_covers_page_clustered_noise() -> None:
    # 100 pages of 10 rows; a page's scores share a page effect (like one query's scores)
    rng = np.random.default_rng(0)
    units = [f"p{i // 10}" for i in range(1000)]
    scores = np.repeat(rng.normal(size=100), 10) + 0.3 * rng.normal(size=1000)
    floor = null_floor(lambda a, b: psi(scores[a], scores[b]), units, 300, 30)
    fresh = [psi(scores, np.repeat(rng.normal(size=30), 10) + 0.3 * rng.normal(size=300)) for _ in range(20)]
    assert np.mean(fresh) < floor  # clustering makes same-distribution PSI exceed the row-count formula...
    assert np.mean(fresh) > 9 * (1 / 1000 + 1 / 300)  # ...which it would fire on


def test_a_debiased_holdout_is_compared_with_recent_pages_under_the_same_curve(engine: Engine) -> None:
    from adapters import dataset
    from adapters.ranking_metrics import evaluate_groups

    curve = [1 / (k + 1) for k in range(20)]
    records, cutoff = _adapter_champion(engine, {"candidate": {"holdout": {"ndcg10": 0.5, "n_groups": 50}},
                                                 "propensity": {"estimated": curve, "used": True}})
    with session_scope(engine) as s:
        ref = events_repo.recent_feedback(session=s, limit=WINDOW, until=cutoff)
        recent = [e.model_dump() for e in
                  events_repo.recent_feedback(session=s, limit=WINDOW, since=ref[-1].ingested_at)]
    report = DriftMonitor(settings(), engine, lexical_score).check()
    groups = dataset.build_groups(recent, catalog_text_of(records).get)

    def ndcg(propensity: list[float] | None) -> float:
        return evaluate_groups(lambda q, texts: np.asarray(lexical_score([(q, t) for t in texts])), groups,
                               propensity=propensity, max_weight=Settings().train.ips_max_weight).ndcg10

    assert abs(ndcg(curve) - ndcg(None)) > 0.01  # the two measures differ on these pages
    assert report.recent_ndcg == pytest.approx(ndcg(curve))  # recent pages measured as the holdout was
