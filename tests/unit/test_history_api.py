"""The history API (`/v1/runs`, `/v1/drift`, `/v1/audit`, `/v1/ingest/stats`) and the console's files."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from storage import events_repo, registry
from storage.db import session_scope
from storage.models import AuditLog, DriftReport, TrainingRun, utcnow
from tests.fixtures.history import History
from tests.fixtures.scoring import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
COUNTERS = {"consumed": 9, "stored": 7, "duplicates": 1, "dead_lettered": 1, "lag": 3,
            "dead_lettered_by_reason": {"invalid_json": 1}}


@pytest.fixture
def make_client(api_clients: Callable[..., TestClient]) -> Callable[..., TestClient]:
    return functools.partial(api_clients, ingest_stats=lambda: COUNTERS)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def _all(client: TestClient, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list, following `next_before`."""
    items: list[dict[str, Any]] = []
    before = None
    while True:
        query = {"limit": limit, **params, **({"before": before} if before else {})}
        page = client.get(path, params=query, headers=AUTH).json()
        items += page["items"]
        before = page["next_before"]
        if before is None:
            return items


def test_runs_are_paged_newest_first_and_filtered(client: TestClient, history: History) -> None:
    runs = _all(client, "/v1/runs", limit=2)
    ids = [r["id"] for r in runs]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids)) == 5
    assert {r["candidate_version"] for r in runs} == {*history.versions, None}
    assert [r["id"] for r in _all(client, "/v1/runs", limit=50, status="skipped")] == [history.skipped_run]
    drift = client.get("/v1/runs", params={"trigger": "drift"}, headers=AUTH).json()["items"]
    assert [r["candidate_version"] for r in drift] == [history.versions[1]]
    assert drift[0]["gate"]["passed"] is True and drift[0]["gate"]["compared_with"] == history.versions[0]
    assert drift[0]["holdout_ndcg10"] == pytest.approx(0.669)


def test_a_run_carries_its_curve_best_step_and_propensity(client: TestClient, history: History) -> None:
    run = client.get(f"/v1/runs/{history.drift_run}", headers=AUTH).json()
    steps = [p["step"] for p in run["curve"]]
    assert steps == list(range(0, run["steps"] + 1, 10)) and run["best_step"] == 60
    assert run["best"]["step"] == 60
    assert run["best"]["holdout_ndcg10"] == max(p["holdout_ndcg10"] for p in run["curve"])
    assert "history" not in run["metrics"] and run["metrics"]["compared_with"]["version"] == history.versions[0]
    assert run["propensity"]["estimated"][0] == 1.0 and len(run["propensity"]["estimated"]) == 10
    other = client.get(f"/v1/runs/{history.runs[history.versions[0]]}", headers=AUTH).json()
    assert other["propensity"] is None and other["best"]["step"] == 40
    skipped = client.get(f"/v1/runs/{history.skipped_run}", headers=AUTH).json()
    assert skipped["curve"] == [] and skipped["best"] is None and skipped["reason"].startswith("only 212")
    missing = client.get("/v1/runs/9999", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found"


def test_drift_reports_link_the_retrains_they_triggered(client: TestClient, history: History,
                                                       sqlite_engine: Engine) -> None:
    reports = _all(client, "/v1/drift", limit=5)
    assert [r["id"] for r in reports] == sorted(history.drift_reports, reverse=True)
    fired = [r for r in reports if r["fired"]]
    assert [r["id"] for r in fired] == [history.fired_report]
    assert fired[0]["triggered_runs"] == [history.drift_run] and fired[0]["retrain_request"] == "started"
    assert all(r["triggered_runs"] == [] for r in reports if not r["fired"])
    assert fired[0]["ndcg10_drop"] == pytest.approx(0.65 - 0.61)
    page = client.get("/v1/drift", params={"limit": 3}, headers=AUTH).json()
    assert page["thresholds"] == {"score_psi": 0.2, "term_js": 0.1, "unseen_item_share": 0.15,
                                  "unseen_term_share": 0.15, "ndcg10_drop": 0.05}
    cut = datetime.fromisoformat(reports[5]["created_at"])
    recent = client.get("/v1/drift", params={"since": cut.isoformat()}, headers=AUTH).json()["items"]
    assert [r["id"] for r in recent] == [r["id"] for r in reports[:6]]
    with session_scope(sqlite_engine) as s:  # a report that names its run wins over the time rule
        row = s.get(DriftReport, history.drift_reports[3])
        assert row is not None
        row.triggered_run_id = history.skipped_run
    named = client.get("/v1/drift", params={"limit": 1000}, headers=AUTH).json()["items"]
    assert [r["triggered_runs"] for r in named if r["id"] == history.drift_reports[3]] == [[history.skipped_run]]


def test_audit_is_paged_and_filtered_by_version(client: TestClient, history: History) -> None:
    v1, v2 = history.versions[:2]
    rows = _all(client, "/v1/audit", limit=1)
    assert [(r["action"], r["to_version"]) for r in rows] == [("auto_promote", v2), ("auto_promote", v1)]
    assert rows[0]["ts"].endswith(("Z", "+00:00"))
    assert [r["to_version"] for r in _all(client, "/v1/audit", limit=10, version=v1)] == [v2, v1]
    assert _all(client, "/v1/audit", limit=10, action="rollback") == []


def test_history_needs_the_token(client: TestClient, make_client: Callable[..., TestClient]) -> None:
    for path in ("/v1/runs", "/v1/runs/1", "/v1/drift", "/v1/audit"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert make_client(api_token=None).get("/v1/runs", headers=AUTH).status_code == 403
    assert client.get("/v1/runs", params={"limit": 0}, headers=AUTH).status_code == 422


def test_ingest_stats_bucket_the_stored_events(client: TestClient, history: History) -> None:
    stats = client.get("/v1/ingest/stats", params={"bucket_s": 60, "limit": 60}).json()  # no token needed
    assert stats["process"] == COUNTERS
    assert stats["stored"]["feedback_events"] == history.events
    rate = stats["rate"]
    assert len(rate["buckets"]) == 60 and sum(b["events"] for b in rate["buckets"]) == history.events
    assert all(b["events_per_s"] == b["events"] / 60 for b in rate["buckets"])
    older = client.get("/v1/ingest/stats", params={"until": rate["next_until"], "limit": 60}).json()["rate"]
    assert older["until"] == rate["since"] and sum(b["events"] for b in older["buckets"]) == 0
    wide = client.get("/v1/ingest/stats", params={"bucket_s": 3600, "limit": 2}).json()["rate"]
    assert sum(b["events"] for b in wide["buckets"]) == history.events


@pytest.mark.parametrize("bucket_s", [60, 300])
def test_ingest_counts_on_each_backend(engine: Engine, bucket_s: int) -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    rows = [{"event_id": f"e{i}", "ts": start, "query": "q", "item_id": "i", "action": "click", "item_text": None,
             "position": 0, "request_id": None, "session_hash": None, "user_hash": None, "topic": "t",
             "partition": 0, "offset": i, "ingested_at": start + timedelta(seconds=37 * i)} for i in range(40)]
    with session_scope(engine) as s:
        events_repo.insert_feedback(session=s, rows=rows)
        counts = events_repo.ingest_counts(session=s, since=start, until=start + timedelta(hours=1),
                                           bucket_s=bucket_s)
    expected: dict[int, int] = {}
    for r in rows:
        t = int(r["ingested_at"].timestamp()) // bucket_s * bucket_s
        expected[t] = expected.get(t, 0) + 1
    assert counts == expected


def test_paged_queries_on_each_backend(engine: Engine) -> None:
    with session_scope(engine) as s:
        for i in range(7):
            s.add(TrainingRun(trigger="drift" if i % 2 else "schedule", status="succeeded", started_at=utcnow()))
            registry.audit(session=s, actor="a", action="promote", from_version=f"v{i:04d}", to_version=f"v{i + 1:04d}")
        s.add(DriftReport(created_at=utcnow() - timedelta(days=2), champion_version="base", n_reference=1,
                          n_recent=1))
    with session_scope(engine) as s:
        first = registry.runs_page(session=s, limit=3)
        second = registry.runs_page(session=s, limit=3, before=first[-1].id)
        assert [r.id for r in first + second] == [7, 6, 5, 4, 3, 2]
        assert [r.id for r in registry.runs_page(session=s, limit=10, trigger="drift")] == [6, 4, 2]
        assert [a.to_version for a in registry.audit_page(session=s, limit=10, version="v0003")] == ["v0004", "v0003"]
        assert registry.drift_page(session=s, limit=5, since=utcnow() - timedelta(days=1)) == []
        assert len(registry.drift_page(session=s, limit=5)) == 1
        assert s.get(AuditLog, 1) is not None


def test_console_is_served_from_the_package_without_cdn(client: TestClient) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    static = Path(__file__).resolve().parents[2] / "daemon" / "serving" / "api" / "static"
    texts = {p.name: p.read_text() for p in static.rglob("*") if p.suffix in (".html", ".js", ".mjs", ".css")}
    for name, text in texts.items():  # every script and stylesheet comes from /ui/, none from the network
        assert not re.search(r"""(src|href)=["']https?://""", text), name
        assert not re.search(r"""(import|from)\s*["']https?://""", text), name
    for ref in re.findall(r"""(?:src|href)=["']\./([^"']+)["']""", page.text):
        assert client.get(f"/ui/{ref}").status_code == 200, ref


def test_openapi_documents_the_history(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, model in (("/v1/runs", "RunsPage"), ("/v1/runs/{run_id}", "RunDetailOut"), ("/v1/drift", "DriftPage"),
                        ("/v1/audit", "AuditPage"), ("/v1/ingest/stats", "IngestStatsOut")):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith(model), path
    assert "before" in {p["name"] for p in spec["paths"]["/v1/runs"]["get"]["parameters"]}
    assert spec["paths"]["/v1/runs"]["get"]["security"] and "security" not in spec["paths"]["/v1/ingest/stats"]["get"]


def test_every_console_file_is_package_data() -> None:
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = root / "daemon" / "serving" / "api"
    globs = patterns["daemon.serving.api"]
    files = [p.relative_to(package).as_posix() for p in (package / "static").rglob("*") if p.is_file()]
    assert "static/vendor/uPlot.iife.min.js" in files and "static/index.html" in files
    # setuptools' `*` does not cross folders, like fnmatch on the parts: each file needs a pattern of its depth
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == []


def test_status_shows_the_champions_position_bias_and_gate_resolution(client: TestClient, history: History) -> None:
    doc = client.get("/v1/status", headers=AUTH).json()
    pb = doc["position_bias"]
    champ = pb["champion_run"]  # the champion (v2) was trained by the drift run, which estimated a curve
    assert (champ["run_id"], champ["candidate_version"]) == (history.drift_run, history.champion)
    assert champ["propensity"]["method"] == "intervention harvesting"
    assert champ["propensity"]["estimated"] == [round(1 / (1 + 0.45 * p), 4) for p in range(10)]
    assert champ["min_detectable_gain"] == 0.0 and champ["gate_passed"] is True
    latest = pb["latest_run"]  # the newest succeeded run (v4, waiting for an operator) stored no curve
    assert latest["run_id"] == history.runs[history.waiting] and latest["propensity"] is None


@pytest.mark.parametrize("path, param, value", [
    ("/v1/ingest/stats", "until", "9999-12-31T23:59:59"),
    ("/v1/ingest/stats", "until", "0001-01-01T00:00:00"),
    ("/v1/ingest/stats", "since", "0001-01-01T00:00:00+14:00"),
    ("/v1/drift", "since", "0001-01-01T00:00:00+14:00"),
])
def test_timestamps_out_of_range_are_a_client_error(client: TestClient, path: str, param: str, value: str) -> None:
    got = client.get(path, params={param: value}, headers=AUTH)
    assert got.status_code == 422, got.text
    assert "out of range" in got.text


def test_query_timestamps_without_a_zone_are_utc(client: TestClient, history: History) -> None:
    until = datetime.now(UTC).replace(microsecond=0, second=0)
    naive = client.get("/v1/ingest/stats", params={"until": until.replace(tzinfo=None).isoformat()}).json()
    aware = client.get("/v1/ingest/stats", params={"until": until.isoformat()}).json()
    assert naive["rate"] == aware["rate"]
