"""#14, serving: a corrupt champion at start-up is reported (degraded), `/v1/score` keeps answering while
the database is away, and a `/metrics` scrape reads no database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from daemon.health import Health
from daemon.metrics import Metrics
from daemon.serving.api.app import create_app
from daemon.serving.role import ServeRole, start_scorer
from daemon.settings import Settings
from daemon.training.promotion import promote
from storage import events_repo, registry
from storage.db import session_scope
from storage.models import utcnow

QUERY = "running shoes"


def _count_statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cur, stmt, *a: seen.append(stmt))
    return seen


def test_a_corrupt_champion_at_start_up_serves_base_but_says_so(
    serving_ranker: Any, sqlite_engine: Engine, artifacts_dir: Path, make_versions: Callable[..., list[str]],
    serve_settings: Callable[..., Settings],
) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    promote(engine=sqlite_engine, version=v1, actor="alice")
    weights = artifacts_dir / v1 / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)  # bit rot: the checksum no longer matches
    settings, metrics = serve_settings(), Metrics()
    health = Health(liveness_timeout_s=60)
    metrics.watch(health)
    with ExitStack() as stack:
        scorer, reconciler = start_scorer(stack, settings, sqlite_engine, ranker=serving_ranker, metrics=metrics)
        health.add_degraded("scorer", lambda: scorer.degraded)  # as `Application._watch_scorer` wires it
        assert scorer.ready and scorer.version == "base"
        assert scorer.degraded is not None and f"champion {v1} cannot be served" in scorer.degraded
        assert 'ranktune_degraded{component="scorer"} 1.0' in metrics.render().decode()
        client = TestClient(create_app(settings=settings, engine=sqlite_engine, scorer=scorer, metrics=Metrics()))
        body = client.get("/readyz").json()
        assert body["status"] == "degraded" and v1 in body["degraded"]["scorer"]
        # the operator rolls back to base: the scorer serves the champion again and is no longer degraded
        promote(engine=sqlite_engine, version="base", actor="alice")
        assert reconciler.sync("test") == "base" and scorer.degraded is None
        assert 'ranktune_degraded{component="scorer"} 0.0' in metrics.render().decode()
        assert client.get("/readyz").json()["status"] == "ready"


@pytest.fixture
def serve_role(serving_ranker: Any, sqlite_engine: Engine,
               serve_settings: Callable[..., Settings]) -> Iterator[Callable[..., ServeRole]]:
    roles: list[ServeRole] = []

    def start(**overrides: Any) -> ServeRole:
        role = ServeRole(serve_settings(**overrides), engine=sqlite_engine, ranker=serving_ranker, control=False,
                         metrics=Metrics()).start()
        roles.append(role)
        return role

    yield start
    for role in roles:
        role.stop()


def test_a_metrics_scrape_reads_no_database(serve_role: Callable[..., ServeRole], sqlite_engine: Engine,
                                            make_versions: Callable[..., list[str]]) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    promote(engine=sqlite_engine, version=v1, actor="alice", reason="an audit row with a time")
    role = serve_role()
    assert role.reconciler is not None
    role.reconciler.sync("test")  # the reconciler reads the time of the last change, once per sync
    with session_scope(sqlite_engine) as s:
        changed = registry.last_champion_change(session=s)
    # aware UTC (SQLite returns stored times without a zone): `.timestamp()` must not read it as local time
    assert changed is not None and changed.utcoffset() == timedelta(0)
    statements = _count_statements(sqlite_engine)
    for _ in range(5):
        text = httpx.get(role.url + "/metrics", timeout=10).text
        (line,) = [x for x in text.splitlines() if x.startswith("ranktune_last_promotion_timestamp_seconds ")]
        assert float(line.split()[1]) == pytest.approx(changed.timestamp())
    assert statements == []


def test_scoring_keeps_answering_while_the_database_is_away(serve_role: Callable[..., ServeRole],
                                                            sqlite_engine: Engine, tmp_path: Path) -> None:
    now = utcnow()
    with session_scope(sqlite_engine) as s:
        events_repo.upsert_catalog(session=s, rows=[
            {"item_id": f"k{i}", "title": f"Trail shoe {i}", "description": None, "category": "shoes",
             "brand": "Fjord", "attributes": {}, "ts": now, "updated_at": now} for i in range(3)])
    role = serve_role(api_catalog_cache_ttl_s=0)  # every lookup tries the database first
    post = lambda items: httpx.post(role.url + "/v1/score", json={"query": QUERY, "items": items},  # noqa: E731
                                    timeout=30)
    cached = [{"item_id": "k0"}, {"item_id": "k1"}]
    assert post(cached).status_code == 200  # read from the catalog, and cached
    statements = _count_statements(sqlite_engine)
    assert post([{"item_id": "a", "text": "red shoe"}]).status_code == 200
    assert statements == []  # items with text: no database at all

    (tmp_path / "serve.db").rename(tmp_path / "away.db")  # the database is gone
    sqlite_engine.dispose()
    r = post([{"item_id": "a", "text": "red shoe"}, {"item_id": "b", "text": "blue sweater"}])
    assert r.status_code == 200, r.text
    r = post(cached)  # known items: served from the cache
    assert r.status_code == 200, r.text
    assert {i["item_id"] for i in r.json()["items"]} == {"k0", "k1"}
    r = post([{"item_id": "k2"}])  # never cached: a clear 503, not a 500
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_unavailable" and "text" in r.json()["error"]["message"]


def test_an_http_server_that_stops_by_itself_is_a_dead_worker(serve_role: Callable[..., ServeRole]) -> None:
    role = serve_role()
    health = Health(liveness_timeout_s=3600)
    health.adopt(role.http_heartbeat)
    assert health.report().live and httpx.get(role.url + "/healthz", timeout=10).status_code == 200
    assert role._server is not None and role._thread is not None
    role._server.should_exit = True  # uvicorn's loop ends while nothing asked the process to stop
    role._thread.join(15)
    assert not role._thread.is_alive()
    report = health.report()
    assert not report.live and report.fatal == ("http: its thread ended unexpectedly",)
    health.shutting_down()  # the same end during a shutdown is a clean stop
    assert health.report().live
