"""`daemon.client.RanktuneClient` against a real serve role (uvicorn on a free port) over real HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from daemon.client import ApiAuthError, ApiError, ApiNotFound, RanktuneClient
from daemon.serving.role import ServeRole
from daemon.settings import Settings
from tests.fixtures.history import History
from tests.fixtures.scoring import TOKEN


@pytest.fixture
def served(serving_ranker: Any, sqlite_engine: Engine, serve_settings: Callable[..., Settings],
           history: History) -> Iterator[str]:
    role = ServeRole(serve_settings(), engine=sqlite_engine, ranker=serving_ranker, control=False,
                     ingest_stats=lambda: {"consumed": 3, "lag": 0}).start()
    try:
        yield role.url
    finally:
        role.stop()


def test_client_covers_every_endpoint(served: str, history: History) -> None:
    v1, v2, v3, v4 = history.versions
    with RanktuneClient(served, token=TOKEN) as rt:
        assert rt.health().status == "alive" and rt.ready().adapter_version == v2
        scored = rt.score("warm winter boots", [("a", "Insulated winter boot"), ("b", "Linen summer shirt")])
        assert scored.adapter_version == v2 and sorted(i.item_id for i in scored.items) == ["a", "b"]
        listing = rt.adapters()
        assert (listing.champion, listing.previous) == (v2, v1) and len(listing.versions) == 4
        assert rt.adapter(v1).history[0].to_version == v2
        assert rt.status(runs=2)["champion"] == v2

        runs = list(rt.iter_runs(page_size=2))
        assert [r.id for r in runs] == sorted((r.id for r in runs), reverse=True) and len(runs) == 5
        detail = rt.run(history.drift_run)
        assert detail.best is not None and detail.best.step == detail.best_step == 60
        assert detail.propensity is not None and len(detail.propensity.estimated) == 10
        assert rt.runs(trigger="drift").items[0].gate is not None

        drift = list(rt.iter_drift(page_size=7))
        assert len(drift) == len(history.drift_reports) and sum(d.fired for d in drift) == 1
        since = drift[0].created_at - timedelta(seconds=1)
        assert [d.id for d in rt.drift(since=since).items] == [drift[0].id]
        assert rt.drift(limit=1).thresholds.score_psi == 0.2
        stats = rt.ingest_stats(bucket_s=300, limit=12)
        assert sum(b.events for b in stats.rate.buckets) == history.events == stats.stored.feedback_events
        assert stats.process == {"consumed": 3, "lag": 0}

        action = rt.promote(v4, reason="best holdout", actor="client-test")
        assert (action.from_version, action.to_version, action.served) == (v2, v4, v4)
        newest = next(rt.iter_audit())
        assert (newest.actor, newest.action, newest.reason, newest.id) == ("client-test", "promote", "best holdout",
                                                                          action.audit_id)
        back = rt.rollback(reason="undo")
        assert (back.to_version, back.served) == (v2, v2)
        assert [a.action for a in rt.iter_audit(page_size=1, version=v4)] == ["rollback", "promote"]
        assert {v.version: v.status for v in rt.adapters().versions}[v3] == "candidate"


def test_client_errors_are_typed(served: str) -> None:
    with RanktuneClient(served, token=TOKEN) as rt:
        with pytest.raises(ApiNotFound) as missing:
            rt.adapter("v0099")
        assert missing.value.code == "version_not_found" and missing.value.status == 404
        with pytest.raises(ApiNotFound):
            rt.run(4242)
        with pytest.raises(ApiError) as refused:
            rt.promote("v0002")  # already the champion
        assert (refused.value.status, refused.value.code) == (409, "invalid_transition")
    with RanktuneClient(served, token="wrong") as rt:
        with pytest.raises(ApiAuthError) as auth:
            rt.runs()
        assert auth.value.status == 401
        assert rt.ingest_stats().stored.feedback_events > 0  # no token needed
    with RanktuneClient(served) as rt, pytest.raises(ApiError) as bad:
        rt.score("", [("a", "x")])
    assert bad.value.status == 422


def test_client_imports_no_model_stack() -> None:
    code = "import sys, daemon.client; print(sorted({'torch', 'transformers', 'fastapi'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
