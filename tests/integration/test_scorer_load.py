"""Under concurrent load, ten promote/rollback cycles: no failed request, every response from a version
that was being served while it ran, and scores equal to a separately loaded model's; and read-your-writes:
no request sent after a promote's 2xx is answered by the version it replaced."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.engine import Engine

from daemon.serving.control import load_registered
from daemon.serving.role import ServeRole
from daemon.settings import Settings
from tests.fixtures.scoring import TOKEN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 8
CYCLES = 10
PAYLOADS: list[dict[str, Any]] = [
    {"query": "waterproof hiking boots", "items": [
        {"item_id": "a", "text": "Leather hiking boot, waterproof"}, {"item_id": "b", "text": "Summer linen dress"},
        {"item_id": "c", "text": "Trail runner, mesh upper"}, {"item_id": "d", "text": "Wool hiking socks"}]},
    {"query": "kitchen knife", "items": [
        {"item_id": "k1", "text": "Chef knife 20cm, stainless"}, {"item_id": "k2", "text": "Bamboo cutting board"},
        {"item_id": "k3", "text": "Knife sharpener"}]},
    {"query": "red dress", "items": [
        {"item_id": "r1", "text": "Red evening dress"}, {"item_id": "r2", "text": "Red running shoe"},
        {"item_id": "r3", "text": "Black cocktail dress"}, {"item_id": "r4", "text": "Red scarf"},
        {"item_id": "r5", "text": "Denim jacket"}]},
]


@pytest.mark.parametrize("serving_path", ["quantized", "merged-fp32"])
def test_promote_rollback_cycles_under_load(
    serving_ranker: Any, reference_ranker: Any, sqlite_engine: Engine, artifacts_dir: Path,
    make_versions: Callable[..., list[str]], serve_settings: Callable[..., Settings], serving_path: str,
) -> None:
    v1, v2, v3 = make_versions(sqlite_engine, 3)
    role = ServeRole(serve_settings(scorer_serving_path=serving_path), engine=sqlite_engine, ranker=serving_ranker,
                     control=False).start()
    stop = threading.Event()
    results: list[tuple[float, float, int, dict[str, Any]]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=role.url, timeout=30) as http:
            i = k
            while not stop.is_set():
                payload_id = i % len(PAYLOADS)
                i += 1
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/score", json=PAYLOADS[payload_id])
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                t1 = time.monotonic()
                with lock:
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                    else:
                        results.append((t0, t1, payload_id, r.json()))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    actions: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for t in threads:
            t.start()
        with httpx.Client(base_url=role.url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as op:
            time.sleep(0.5)
            actions.append(op.post(f"/v1/adapters/{v1}/promote").json())
            for c in range(CYCLES):
                time.sleep(0.3)
                actions.append(op.post(f"/v1/adapters/{(v2, v3)[c % 2]}/promote").json())
                time.sleep(0.3)
                actions.append(op.post("/v1/adapters/rollback", json={"reason": f"cycle {c}"}).json())
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        transitions = list(role.scorer.transitions) if role.scorer else []
        role.stop()
    elapsed = time.monotonic() - started

    assert not failures, failures[:5]
    assert all(a.get("local_swap") == "ok" for a in actions), actions
    assert [a["to_version"] for a in actions] == [v1] + [x for c in range(CYCLES) for x in ((v2, v3)[c % 2], v1)]
    assert len(results) > 10 * CLIENTS, f"only {len(results)} responses in {elapsed:.1f}s"

    # every response's version was the served one at some moment between its send and its answer
    times = [t for t, _ in transitions]
    for t0, t1, _, body in results:
        lo = bisect.bisect_right(times, t0) - 1
        hi = bisect.bisect_right(times, t1)
        live = {v for _, v in transitions[max(lo, 0):hi]}
        assert body["adapter_version"] in live, (body["adapter_version"], live)
    seen = {body["adapter_version"] for *_, body in results}
    assert {v1, v2, v3} <= seen

    # scores equal a separately loaded model with that version
    names: dict[str, str | None] = {"base": None}
    for v in seen - {"base"}:
        loaded = load_registered(sqlite_engine, artifacts_dir, v)
        names[v] = f"ref_load_{v}_{id(results)}"
        reference_ranker.add_adapter(names[v], loaded.state, loaded.peft_config)
    try:
        expected: dict[tuple[int, str], dict[str, float]] = {}
        for (pid, v) in {(pid, body["adapter_version"]) for *_, pid, body in results}:
            p = PAYLOADS[pid]
            scores = reference_ranker.score(p["query"], [i["text"] for i in p["items"]], adapter=names[v])
            expected[(pid, v)] = {i["item_id"]: float(s) for i, s in zip(p["items"], scores, strict=True)}
        for *_, pid, body in results:
            exp = expected[(pid, body["adapter_version"])]
            got = {i["item_id"]: i["score"] for i in body["items"]}
            np.testing.assert_allclose([got[k] for k in exp], list(exp.values()), atol=1e-4)
    finally:
        for name in names.values():
            if name is not None:
                reference_ranker.delete_adapter(name)
    print(f"\n{len(results)} responses in {elapsed:.1f}s, {len(actions)} swaps, versions {sorted(seen)}")


def test_read_your_writes_under_8_clients(
    serving_ranker: Any, sqlite_engine: Engine, make_versions: Callable[..., list[str]],
    serve_settings: Callable[..., Settings],
) -> None:
    """Every request sent after a promote's 2xx (and before the next promote) is scored by the promoted version."""
    v1, v2 = make_versions(sqlite_engine, 2)
    role = ServeRole(serve_settings(), engine=sqlite_engine, ranker=serving_ranker, control=False).start()
    stop = threading.Event()
    sent: list[tuple[float, float, int, str]] = []  # (sent, answered, status, adapter_version)
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=role.url, timeout=30) as http:
            i = k
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/score", json=PAYLOADS[i % len(PAYLOADS)])
                    version = r.json().get("adapter_version", "") if r.status_code == 200 else ""
                    row = (t0, time.monotonic(), r.status_code, version)
                except httpx.HTTPError:
                    row = (t0, time.monotonic(), 0, "")
                i += 1
                with lock:
                    sent.append(row)

    calls: list[tuple[float, float, str]] = []  # (promote sent, 2xx received, target)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        with httpx.Client(base_url=role.url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as op:
            for c in range(6):
                time.sleep(0.4)
                target = (v1, v2)[c % 2]
                t0 = time.monotonic()
                r = op.post(f"/v1/adapters/{target}/promote")
                calls.append((t0, time.monotonic(), target))
                assert r.status_code == 200 and r.json()["served"] == target, r.text
            time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        role.stop()

    assert all(status == 200 for _, _, status, _ in sent), [row for row in sent if row[2] != 200][:5]
    assert stale_after_answer(sent, calls) == []
    checked = sum(1 for t0, *_ in sent if t0 > calls[0][1])
    assert checked >= len(calls), f"only {checked} requests were sent after the first promote's answer"


def stale_after_answer(sent: list[tuple[float, float, int, str]],
                       calls: list[tuple[float, float, str]]) -> list[tuple[float, str, set[str]]]:
    """Requests answered by a version other than the last promote answered before they were sent, or one
    promoted after that (whose call began before they were answered): what read-your-writes forbids."""
    bad = []
    for t0, t1, status, version in sent:
        last = max((k for k, c in enumerate(calls) if c[1] < t0), default=None)
        if status != 200 or last is None:
            continue
        allowed = {calls[last][2]} | {c[2] for c in calls[last + 1:] if c[0] < t1}
        if version not in allowed:
            bad.append((t0, version, allowed))
    return bad
