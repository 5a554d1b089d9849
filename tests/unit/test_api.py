"""The HTTP API in-process: scoring, bad requests, auth + audit, operator actions, health, metrics."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from storage import events_repo, registry
from storage.db import session_scope
from storage.models import AuditLog, utcnow
from tests.fixtures.scoring import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEMS = [{"item_id": "a", "text": "Red running shoe, mesh"}, {"item_id": "b", "text": "Blue wool sweater"},
         {"item_id": "c", "text": "Running socks, 3 pack"}]


@pytest.fixture
def make_client(api_clients: Callable[..., TestClient]) -> Callable[..., TestClient]:
    return functools.partial(api_clients, ingest_stats=lambda: {"consumed": 7, "stored": 5, "lag": 2})


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def _audit_count(engine: Engine) -> int:
    with session_scope(engine) as s:
        return int(s.execute(select(func.count()).select_from(AuditLog)).scalar_one())


def test_score_sorts_and_names_version(client: TestClient) -> None:
    r = client.post("/v1/score", json={"query": "running shoes", "items": ITEMS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter_version"] == "base"
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and [i["rank"] for i in body["items"]] == [1, 2, 3]
    assert {i["item_id"] for i in body["items"]} == {"a", "b", "c"}
    assert body["timing"]["total_ms"] >= body["timing"]["model_ms"] > 0


def test_text_comes_from_the_catalog(client: TestClient, sqlite_engine: Engine) -> None:
    now = utcnow()
    with session_scope(sqlite_engine) as s:
        events_repo.upsert_catalog(session=s, rows=[{
            "item_id": "k1", "title": "Trail running shoe", "description": None, "category": "shoes",
            "brand": "Fjord", "attributes": {}, "ts": now, "updated_at": now}])
    r = client.post("/v1/score", json={"query": "running shoes", "items": [{"item_id": "k1"}, ITEMS[1]]})
    assert r.status_code == 200, r.text
    explicit = {"item_id": "k1", "text": "Trail running shoe | brand: Fjord | category: shoes"}  # product_text
    r2 = client.post("/v1/score", json={"query": "running shoes", "items": [explicit, ITEMS[1]]})
    assert {i["item_id"]: i["score"] for i in r.json()["items"]} == pytest.approx(
        {i["item_id"]: i["score"] for i in r2.json()["items"]}, abs=1e-5)
    r = client.post("/v1/score", json={"query": "running shoes", "items": [{"item_id": "nope"}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_items" and "nope" in r.text


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"query": "", "items": ITEMS}, 422, "query"),
    ({"query": "   ", "items": ITEMS}, 422, "must not be empty"),
    ({"query": "q", "items": []}, 422, "items"),
    ({"query": "q", "items": [{"item_id": f"i{k}", "text": "t"} for k in range(21)]}, 422, "at most 20"),
    ({"query": "q", "items": [{"item_id": "a", "text": "x" * 257}]}, 422, "at most 256"),
    ({"query": "q" * 257, "items": ITEMS}, 422, "query"),
    ({"query": 5, "items": ITEMS}, 422, "query"),
    ({"query": "q", "items": [{"item_id": 1, "text": "t"}]}, 422, "item_id"),
    ({"query": "q", "items": "abc"}, 422, "items"),
    ({"query": "q", "items": [ITEMS[0], ITEMS[0]]}, 422, "duplicate"),
    ({"query": "q", "items": ITEMS, "extra": 1}, 422, "extra"),
    ({"items": ITEMS}, 422, "query"),
])
def test_bad_requests_get_4xx_and_service_keeps_serving(
    client: TestClient, body: dict[str, Any], status: int, needle: str
) -> None:
    r = client.post("/v1/score", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle.lower() in err["message"].lower(), err
    assert client.post("/v1/score", json={"query": "shoes", "items": ITEMS}).status_code == 200


def test_non_json_and_oversized_bodies(client: TestClient) -> None:
    r = client.post("/v1/score", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/score", content=b"query=x", headers={"Content-Type": "text/plain"})
    assert 400 <= r.status_code < 500
    huge = json.dumps({"query": "q", "items": [{"item_id": "a", "text": "x" * 20000}]}).encode()
    r = client.post("/v1/score", content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "16384" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(40):
            yield b" " * 1000

    r = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.post("/v1/score", json={"query": "shoes", "items": ITEMS}).status_code == 200


def test_auth_refusals_write_no_audit(client: TestClient, sqlite_engine: Engine,
                                      make_versions: Callable[..., list[str]]) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    url = f"/v1/adapters/{v1}/promote"
    refusals = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": TOKEN},
        {"X-Api-Token": TOKEN},
        {"X-Ranktune-Token": TOKEN, "Cookie": f"token={TOKEN}"},
    ]
    for headers in refusals:
        for method, path in (("post", url), ("post", "/v1/adapters/rollback"), ("get", "/v1/adapters"),
                             ("get", f"/v1/adapters/{v1}")):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
    r = client.post(f"{url}?token={TOKEN}")
    assert r.status_code == 401
    assert _audit_count(sqlite_engine) == 0

    r = client.post(url, headers=AUTH, json={"reason": "looks better", "actor": "alice"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["from_version"], out["to_version"], out["served"], out["local_swap"]) == ("base", v1, v1, "ok")
    with session_scope(sqlite_engine) as s:
        rows = registry.audit_log(session=s)
        assert [(a.actor, a.action, a.from_version, a.to_version, a.reason) for a in rows] == [
            ("alice", "promote", "base", v1, "looks better")]
        assert rows[0].ts is not None
    r = client.post("/v1/score", json={"query": "shoes", "items": ITEMS})
    assert r.json()["adapter_version"] == v1


def test_operator_endpoints_disabled_without_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_token=None)
    for headers in ({}, AUTH):
        r = client.get("/v1/adapters", headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "operator_disabled"
    assert client.post("/v1/score", json={"query": "shoes", "items": ITEMS}).status_code == 200


def test_operator_actions(client: TestClient, sqlite_engine: Engine, make_versions: Callable[..., list[str]],
                          artifacts_dir: Path) -> None:
    v1, v2, v3 = make_versions(sqlite_engine, 3)
    r = client.post("/v1/adapters/rollback", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    for v in (v1, v2):
        assert client.post(f"/v1/adapters/{v}/promote", headers=AUTH).json()["served"] == v
    r = client.post(f"/v1/adapters/{v2}/promote", headers=AUTH)
    assert r.status_code == 409
    listing = client.get("/v1/adapters", headers=AUTH).json()
    assert (listing["champion"], listing["previous"], listing["served"]) == (v2, v1, v2)
    assert {x["version"]: x["status"] for x in listing["versions"]} == {v1: "retired", v2: "champion",
                                                                         v3: "candidate"}
    detail = client.get(f"/v1/adapters/{v1}", headers=AUTH).json()
    assert detail["checksum"] and [h["action"] for h in detail["history"]] == ["promote", "promote"]
    r = client.post("/v1/adapters/rollback", headers=AUTH, json={"reason": "regression"})
    assert r.status_code == 200 and r.json()["to_version"] == v1 and r.json()["served"] == v1

    # a corrupt artifact is refused before anything changes: no audit row, champion keeps serving
    weights = artifacts_dir / v3 / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5] + b"XXXXX")
    n = _audit_count(sqlite_engine)
    r = client.post(f"/v1/adapters/{v3}/promote", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "artifact_corrupt", r.text
    assert _audit_count(sqlite_engine) == n
    assert client.post("/v1/score", json={"query": "q", "items": ITEMS}).json()["adapter_version"] == v1

    # a version trained on another base is refused before anything changes (every scorer would refuse it)
    with session_scope(sqlite_engine) as s:
        registry.get_version(session=s, version=v2).base_model = "another-base@0123456789ab"
    n = _audit_count(sqlite_engine)
    r = client.post(f"/v1/adapters/{v2}/promote", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition", r.text
    assert "another-base@0123456789ab" in r.json()["error"]["message"]
    assert _audit_count(sqlite_engine) == n
    # ... and one trained on this base quantized otherwise than the scorer runs it
    with session_scope(sqlite_engine) as s:
        row = registry.get_version(session=s, version=v2)
        row.base_model = registry.get_version(session=s, version=v1).base_model
        row.quantization = "none" if row.quantization != "none" else "int8"
        other = row.quantization
    r = client.post(f"/v1/adapters/{v2}/promote", headers=AUTH)
    assert r.status_code == 409 and f"trained on the {other}-quantized base" in r.json()["error"]["message"], r.text
    assert _audit_count(sqlite_engine) == n
    assert client.get("/v1/adapters", headers=AUTH).json()["champion"] == v1

    for bad in ("v1", "v0001.bak", "V0001", "..", "v0001%2F..%2F..%2Fetc"):
        r = client.post(f"/v1/adapters/{bad}/promote", headers=AUTH)
        assert r.status_code in (400, 404), (bad, r.text)
    assert client.get("/v1/adapters/v0099", headers=AUTH).status_code == 404
    assert client.post("/v1/adapters/base/promote", headers=AUTH).json()["served"] == "base"
    assert _audit_count(sqlite_engine) == n + 1


def test_health_metrics_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/score", json={"query": "shoes", "items": ITEMS})
    client.post("/v1/score", json={"query": "", "items": ITEMS})
    text = client.get("/metrics").text
    for needle in ('ranktune_requests_total{status="ok"} 1.0', 'ranktune_requests_total{status="422"} 1.0',
                   "ranktune_request_latency_seconds_bucket", "ranktune_scorer_batch_pairs_bucket",
                   "ranktune_scorer_queue_depth", 'ranktune_swaps_total{outcome="ok"}',
                   "ranktune_swap_duration_seconds", 'ranktune_active_adapter_info{version="base"} 1.0',
                   "ranktune_ready 1.0", "ranktune_ingest_consumed_total 7.0", "ranktune_ingest_lag_offsets 2.0"):
        assert needle in text, needle
    spec = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/adapters", "/v1/adapters/{version}/promote", "/v1/adapters/rollback",
            "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


def test_not_ready_is_503(client: TestClient) -> None:
    client.app.state.ctx.scorer.stop()  # type: ignore[attr-defined]
    r = client.get("/readyz")
    assert r.status_code == 503
    r = client.post("/v1/score", json={"query": "shoes", "items": ITEMS})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready" and r.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 200


def test_status_needs_the_token_and_reports_the_registry(client: TestClient, sqlite_engine: Engine,
                                                         make_versions: Callable[..., list[str]]) -> None:
    assert client.get("/v1/status").status_code == 401
    v1, v2 = make_versions(sqlite_engine, 2)
    assert client.post(f"/v1/adapters/{v1}/promote", headers=AUTH, json={"reason": "t"}).status_code == 200
    doc = client.get("/v1/status", headers=AUTH).json()
    assert doc["champion"] == v1 and doc["previous"] == "base"
    assert doc["served_version"] == v1
    assert [c["version"] for c in doc["candidates"]] == [v2]
    assert doc["schedule"] == {"known": False}  # this app runs no scheduler
