"""The serve role: scorer + reconciler + control listener + the HTTP server, started and stopped as one.

`ServeRole(settings)` builds nothing heavy; `start()` loads the model, starts the scorer worker, brings
it to the registry's champion (start-up reconcile), marks it ready, starts the periodic reconcile and
the control listener, and serves HTTP from a thread. `stop()` undoes that in reverse order. `ranktune
serve` runs it alone (`run()`, with signal handling); `ranktune run` can start it beside other roles.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import uvicorn
from sqlalchemy.engine import Engine

from adapters.ranker import Ranker
from daemon.api.app import create_app
from daemon.control import ControlListener, ControlMessage, ControlPublisher, Reconciler, registered_loader
from daemon.errors import StartupCheckFailed
from daemon.lifecycle import install_signal_handlers
from daemon.metrics import Metrics
from daemon.model_specs import lora_spec, model_spec
from daemon.scorer import Scorer
from daemon.settings import Settings
from storage import registry
from storage.db import ensure_schema, make_engine, session_scope

log = logging.getLogger(__name__)


class ServeRole:
    """Owns one scorer replica and its HTTP API."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        ranker: Ranker | None = None,
        metrics: Metrics | None = None,
        ingest_stats: Callable[[], Mapping[str, Any]] | None = None,
        schedule: Callable[[], Mapping[str, Any]] | None = None,
        control: bool = True,
    ) -> None:
        """`engine`/`ranker` may be given (tests, `ranktune run`); otherwise `start()` makes them.

        `control=False` runs without the broker: no control notices are sent or read, and replicas
        converge by their periodic reconcile only.
        """
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._engine = engine
        self._ranker = ranker
        self._ingest_stats = ingest_stats
        self._schedule = schedule
        self._control = control
        self._stack = ExitStack()
        self._stop_requested = threading.Event()
        self.scorer: Scorer | None = None
        self.reconciler: Reconciler | None = None
        self.listener: ControlListener | None = None
        self.publisher: ControlPublisher | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServeRole:
        """Load, reconcile, and serve; returns once the HTTP server accepts connections."""
        s = self.settings
        try:
            engine = self._engine
            if engine is None:
                engine = make_engine(s.sqlalchemy_url)
                self._stack.callback(engine.dispose)
            ensure_schema(engine)
            ranker = self._ranker or Ranker.load(model_spec(s), lora_spec(s), batch_size=s.scorer_max_batch)
            scorer = self.scorer = Scorer.from_settings(
                ranker, s, loader=registered_loader(engine, s.artifacts_dir), metrics=self.metrics)
            scorer.start()
            self._stack.callback(scorer.stop)
            reconciler = self.reconciler = Reconciler(engine, scorer, interval_s=s.reconcile_interval_s)
            served = reconciler.safe_sync("start-up")
            if served is None:
                log.error("start-up reconcile failed; serving %s until the next reconcile", scorer.version)
            scorer.mark_ready()
            reconciler.start()
            self._stack.callback(reconciler.stop)
            if self._control:
                self.publisher = ControlPublisher(s)
                self._stack.callback(self.publisher.close)
                self.listener = ControlListener(s, self._on_control)
                self.listener.start()
                self._stack.callback(self.listener.stop)
            self.metrics.add_gauge_source(
                "ranktune_last_promotion_timestamp_seconds",
                "Unix time the champion last changed (promotion or rollback), from the registry.",
                lambda: _last_change(engine))
            app = create_app(settings=s, engine=engine, scorer=scorer, metrics=self.metrics, reconciler=reconciler,
                             publish=self.publisher.publish if self.publisher else None,
                             ingest_stats=self._ingest_stats, schedule=self._schedule,
                             control_state=self.listener.state if self.listener else None)
            self._serve_http(app, timeout_s)
        except BaseException:
            self._stack.close()
            raise
        log.info("serving on %s (adapter %s)", self.url, scorer.version)
        return self

    def _on_control(self, message: ControlMessage) -> None:
        assert self.reconciler is not None
        self.reconciler.safe_sync(f"control {message.action} {message.version}")

    def _serve_http(self, app: Any, timeout_s: float) -> None:
        s = self.settings
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the listening
        # socket says TCP; without it, keep-alive responses (headers and body written apart) stall ~40 ms
        # on Nagle + delayed ACK.
        family = socket.AF_INET6 if ":" in s.api_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.api_host, s.api_port))
        except OSError as exc:
            sock.close()
            raise StartupCheckFailed(f"cannot bind {s.api_host}:{s.api_port}: {exc} (set RANKTUNE_API_PORT)") from exc
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False, timeout_graceful_shutdown=5)
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ranktune-http",
                                        daemon=True)
        self._thread.start()
        self._stack.callback(sock.close)
        self._stack.callback(self._stop_http)
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StartupCheckFailed(f"the HTTP server did not start on {self.url}")
            time.sleep(0.02)

    def _stop_http(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)

    def healthy(self) -> bool:
        """Every thread of the role is alive (for a supervisor like `ranktune run`)."""
        return bool(self.scorer and self.scorer.ready and self._thread and self._thread.is_alive())

    def request_stop(self) -> None:
        """Ask `run()` to return (signal-safe: only sets a flag)."""
        self._stop_requested.set()

    def stop(self) -> None:
        """Stop HTTP first (no new requests), then the listener, the reconcile and the scorer."""
        self._stack.close()
        log.info("serve role stopped")

    def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM (or `request_stop()`), stop."""
        restore = install_signal_handlers(self.request_stop)
        try:
            self.start()
            while not self._stop_requested.wait(1.0):
                if not self.healthy():
                    log.error("a serve thread died; stopping")
                    break
        finally:
            self.stop()
            restore()


def _last_change(engine: Engine) -> float | None:
    with session_scope(engine) as session:
        ts = registry.last_champion_change(session=session)
    return ts.timestamp() if ts is not None else None
