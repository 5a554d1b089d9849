"""The ops port: `/metrics`, `/healthz` and `/readyz` for every process, whatever its roles.

`RANKTUNE_OPS_HOST:RANKTUNE_OPS_PORT` (default `127.0.0.1:9464`, `0` picks a free port). A process that
also serves the API answers the same three paths there too, from the same `Metrics` and `Health`
(`probe_healthz` and `probe_readyz` build both answers).

The server is uvicorn with a three-route Starlette app in a thread: the same server stack as the API
(already a dependency, and proven there), which can answer health probes while a scrape runs.
`prometheus_client.start_http_server` was the alternative, but it serves only metrics (every path
answers the exposition), so the probes would have needed a second server anyway.

* `/healthz`: 200 while the process can recover by itself; 503 when a worker died (its thread ended)
  or is stuck past `max(deadline, RANKTUNE_LIVENESS_TIMEOUT_S)`. The process is then exiting with
  code 1, for its supervisor to restart it.
* `/readyz`: 200 when every worker beats within its deadline, the scorer (if any) has its model, and
  the process is neither starting nor stopping; 503 otherwise, naming each failing worker or check and
  why in the JSON body. A degraded scorer (serving the base after its champion failed to load) stays
  200 with `"status": "degraded"`: it still answers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.errors import StartupCheckFailed
from daemon.health import Health, HealthReport
from daemon.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


def probe_healthz(health: Health) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of `/healthz`."""
    report = health.report()
    if report.live:
        return 200, {"status": "alive"}
    message = "; ".join(report.fatal)
    return 503, {"status": "dead", "fatal": list(report.fatal),
                 "error": {"code": "not_live", "message": f"the process cannot recover: {message}"}}


def readiness_body(report: HealthReport) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of `/readyz` for one health report."""
    degraded = {name: why for name, why in report.degraded.items() if why}
    body: dict[str, Any] = {"status": "ready", **report.details}
    if degraded:
        body["status"] = "degraded"
        body["degraded"] = degraded
    body["workers"] = {w.name: w.as_dict() for w in report.workers}
    if report.ready:
        return 200, body
    body["status"] = "not_ready"
    body["not_ready"] = list(report.not_ready)
    body["error"] = {"code": "not_ready", "message": "; ".join(report.not_ready)}
    return 503, body


def probe_readyz(health: Health) -> tuple[int, dict[str, Any]]:
    return readiness_body(health.report())


def ops_app(metrics: Metrics) -> Starlette:
    """The ops port's application over `metrics` (and the `Health` it watches)."""

    def health() -> Health:
        if metrics.health is None:
            raise RuntimeError("ops app started before Metrics.watch(health)")
        return metrics.health

    def healthz(request: Request) -> Response:
        status, body = probe_healthz(health())
        return JSONResponse(body, status_code=status)

    def readyz(request: Request) -> Response:
        status, body = probe_readyz(health())
        return JSONResponse(body, status_code=status)

    def render(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", render)])


class OpsServer:
    """Serves `ops_app(metrics)` on host:port from a daemon thread; `start()` returns once it accepts."""

    def __init__(self, metrics: Metrics, *, host: str, port: int) -> None:
        self._app = ops_app(metrics)
        self.host = host
        self._want_port = port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> OpsServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._want_port))
        except OSError as exc:
            sock.close()
            raise StartupCheckFailed(f"cannot bind the ops port {self.host}:{self._want_port}: {exc} "
                                     "(set RANKTUNE_OPS_PORT, or 0 for a free port)") from exc
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self._app, log_config=None, lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2)
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ranktune-ops",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise StartupCheckFailed(f"the ops server did not start on {self.url}")
            time.sleep(0.02)
        log.info("ops endpoints (/metrics, /healthz, /readyz) on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
