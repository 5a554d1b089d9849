"""What routes depend on: the app's collaborators, operator auth, the body-size limit, request metrics.

Operator auth: `Authorization: Bearer <RANKTUNE_API_TOKEN>`, compared with `hmac.compare_digest`.
Without a configured token the operator endpoints answer **403 operator_disabled** (they exist, the
OpenAPI lists them, but nobody can use them), which tells an operator what to configure; a wrong,
missing or misplaced token is **401**.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.errors import AuthError
from daemon.metrics import Metrics
from daemon.serving.api.errors import OperatorDisabled, error_body
from daemon.serving.catalog import CatalogTexts
from daemon.serving.control import Reconciler
from daemon.serving.scorer import Scorer
from daemon.settings import Settings
from daemon.training.promotion import Publish


@dataclass
class ApiContext:
    """Everything the routes use, passed in explicitly by `create_app`."""

    settings: Settings
    engine: Engine
    scorer: Scorer
    metrics: Metrics
    reconciler: Reconciler | None = None  # local swap right after an operator action
    publish: Publish | None = None  # control notices; None: replicas learn by reconciling
    ingest_stats: Callable[[], Mapping[str, Any]] | None = None
    control_state: Callable[[], str] | None = None  # the control listener's state, shown by /readyz
    schedule: Callable[[], Mapping[str, Any]] | None = None  # next runs, training in progress (scheduler role)
    catalog: CatalogTexts | None = None  # texts of items sent without one (built by `create_app`)


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


_bearer = HTTPBearer(auto_error=False, description="RANKTUNE_API_TOKEN")


def require_operator(
    ctx: ApiContext = Depends(get_ctx),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """Allow the request only with the configured bearer token (constant-time comparison)."""
    token = ctx.settings.api.token
    if token is None or not token.get_secret_value():
        raise OperatorDisabled("operator endpoints are disabled: no RANKTUNE_API_TOKEN is configured")
    if credentials is None:
        raise AuthError("operator endpoints need an 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise AuthError("wrong operator token")


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before any route parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:  # read the (bounded) body up front, then replay it to the app
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body("payload_too_large", f"request body is over the limit of {self.max_bytes} bytes")
        await JSONResponse(status_code=413, content=body)(scope, receive, send)


class RequestMetrics:
    """ASGI middleware: count and time requests to `path` by outcome (`ok` or the HTTP status)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, path: str) -> None:
        self.app = app
        self.metrics = metrics
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            label = "ok" if 200 <= status[0] < 300 else str(status[0])
            self.metrics.requests.labels(status=label).inc()
            self.metrics.request_latency.observe(time.perf_counter() - start)
