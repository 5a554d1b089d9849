"""A small typed client of the ranktune HTTP API (httpx + the API's own pydantic models).

    with RanktuneClient("http://127.0.0.1:8080", token=os.environ["RANKTUNE_API_TOKEN"]) as rt:
        print(rt.score("hiking boots", [("sku-1", "Trail boot"), ("sku-2", None)]).items[0].item_id)
        for run in rt.iter_runs(status="succeeded"):
            print(run.id, run.holdout_ndcg10)
        rt.promote("v0007", reason="better on the spring catalogue")

Every endpoint has a method; paged lists have a page method (`runs`, `drift`, `audit`) and an iterator
that follows the cursor (`iter_runs`, ...). A non-2xx answer raises `ApiError` (or `ApiAuthError`,
`ApiNotFound`) carrying the status and the API's error code. It imports no model stack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from daemon.errors import DaemonError
from daemon.serving.api.schemas import (
    ActionOut,
    AdaptersOut,
    AuditOut,
    AuditPage,
    DriftOut,
    DriftPage,
    HealthOut,
    IngestStatsOut,
    ReadyOut,
    RunDetailOut,
    RunOut,
    RunsPage,
    ScoreResponse,
    VersionDetailOut,
)

M = TypeVar("M", bound=BaseModel)
Item = TypeVar("Item")


class ApiError(DaemonError):
    """The API answered with an error: `status` (HTTP), `code` (e.g. `invalid_transition`), `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ApiAuthError(ApiError, PermissionError):
    """401 (missing or wrong token) or 403 (operator endpoints disabled on the server)."""


class ApiNotFound(ApiError, LookupError):
    """404: no such version, run or path."""


def _error(response: httpx.Response) -> ApiError:
    try:
        err = response.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200] or response.reason_phrase
    cls = {401: ApiAuthError, 403: ApiAuthError, 404: ApiNotFound}.get(response.status_code, ApiError)
    return cls(response.status_code, code, message)


def _params(**values: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items() if v is not None}


class RanktuneClient:
    """One connection pool to one ranktune API. `token` is `RANKTUNE_API_TOKEN` (operator endpoints)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RanktuneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise _error(response)
        return model.model_validate(response.json())

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise _error(response)
        doc: dict[str, Any] = response.json()
        return doc

    # --- scoring and health ------------------------------------------------------------------------
    def score(self, query: str, items: Sequence[tuple[str, str | None]]) -> ScoreResponse:
        """Rank `(item_id, text)` pairs for `query` (text None: the catalog's)."""
        body = {"query": query, "items": [{"item_id": i, **({"text": t} if t is not None else {})} for i, t in items]}
        return self._call(ScoreResponse, "POST", "/v1/score", json=body)

    def health(self) -> HealthOut:
        return self._call(HealthOut, "GET", "/healthz")

    def ready(self) -> ReadyOut:
        """The served version; raises ApiError (503 not_ready) while the model is not serving."""
        return self._call(ReadyOut, "GET", "/readyz")

    # --- versions and operator actions ---------------------------------------------------------------
    def adapters(self) -> AdaptersOut:
        return self._call(AdaptersOut, "GET", "/v1/adapters")

    def adapter(self, version: str) -> VersionDetailOut:
        return self._call(VersionDetailOut, "GET", f"/v1/adapters/{version}")

    def promote(self, version: str, *, reason: str | None = None, actor: str | None = None) -> ActionOut:
        body = _params(reason=reason, actor=actor)
        return self._call(ActionOut, "POST", f"/v1/adapters/{version}/promote", json=body)

    def rollback(self, *, reason: str | None = None, actor: str | None = None) -> ActionOut:
        return self._call(ActionOut, "POST", "/v1/adapters/rollback", json=_params(reason=reason, actor=actor))

    def status(self, runs: int = 5) -> dict[str, Any]:
        """What `ranktune status --json` prints, plus the schedule and the served version."""
        return self._json("GET", "/v1/status", params={"runs": runs})

    # --- history -----------------------------------------------------------------------------------
    def runs(self, *, limit: int = 50, before: int | None = None, status: str | None = None,
             trigger: str | None = None) -> RunsPage:
        return self._call(RunsPage, "GET", "/v1/runs",
                          params=_params(limit=limit, before=before, status=status, trigger=trigger))

    def run(self, run_id: int) -> RunDetailOut:
        return self._call(RunDetailOut, "GET", f"/v1/runs/{run_id}")

    def drift(self, *, since: datetime | None = None, limit: int = 100, before: int | None = None) -> DriftPage:
        return self._call(DriftPage, "GET", "/v1/drift", params=_params(since=since, limit=limit, before=before))

    def audit(self, *, limit: int = 50, before: int | None = None, version: str | None = None,
              action: str | None = None) -> AuditPage:
        return self._call(AuditPage, "GET", "/v1/audit",
                          params=_params(limit=limit, before=before, version=version, action=action))

    def ingest_stats(self, *, bucket_s: int = 60, limit: int = 60, until: datetime | None = None,
                     since: datetime | None = None) -> IngestStatsOut:
        return self._call(IngestStatsOut, "GET", "/v1/ingest/stats",
                          params=_params(bucket_s=bucket_s, limit=limit, until=until, since=since))

    def iter_runs(self, *, page_size: int = 100, status: str | None = None,
                  trigger: str | None = None) -> Iterator[RunOut]:
        """Every run, newest first, page by page."""
        return _follow(lambda before: self.runs(limit=page_size, before=before, status=status, trigger=trigger))

    def iter_drift(self, *, since: datetime | None = None, page_size: int = 500) -> Iterator[DriftOut]:
        return _follow(lambda before: self.drift(since=since, limit=page_size, before=before))

    def iter_audit(self, *, page_size: int = 100, version: str | None = None,
                   action: str | None = None) -> Iterator[AuditOut]:
        return _follow(lambda before: self.audit(limit=page_size, before=before, version=version, action=action))


def _follow(fetch: Callable[[int | None], Any]) -> Iterator[Any]:
    before: int | None = None
    while True:
        page = fetch(before)
        yield from page.items
        before = page.next_before
        if before is None:
            return
