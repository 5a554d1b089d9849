"""The serve role's parts: the live scorer following the registry, the control listener, the HTTP server.

`start_scorer` is the one place a scorer is wired: load the model, start the worker, bring it to the
registry's champion (start-up reconcile), mark it ready, start the periodic reconcile. The serve role uses
it, and so does a scheduler without a serve role (its drift job scores with the champion).

`ServeRole(settings)` builds nothing heavy; `start()` starts a scorer, the control listener and the HTTP
server thread; `stop()` undoes that in reverse order. It has no loop of its own: `daemon.app.Application`
runs it (`ranktune serve`, `ranktune run`), and benchmarks and tests start and stop it directly.
"""

from __future__ import annotations

import functools
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
from daemon.errors import StartupCheckFailed
from daemon.health import Heartbeat
from daemon.metrics import Metrics
from daemon.serving.api.app import create_app
from daemon.serving.control import ControlListener, ControlMessage, ControlPublisher, Reconciler, registered_loader
from daemon.serving.scorer import Scorer
from daemon.settings import Settings
from storage.db import ensure_schema, make_engine

log = logging.getLogger(__name__)


def start_scorer(stack: ExitStack, settings: Settings, engine: Engine, *, ranker: Ranker | None = None,
                 metrics: Metrics | None = None) -> tuple[Scorer, Reconciler]:
    """A ready scorer on the registry's champion and its periodic reconcile; both stop when `stack` closes."""
    s = settings
    ranker = ranker or Ranker.load(s.model, s.lora, batch_size=s.scorer.max_batch)
    scorer = Scorer.from_settings(ranker, s, loader=registered_loader(engine, s.storage.artifacts_dir),
                                  metrics=metrics)
    scorer.start()
    stack.callback(scorer.stop)
    reconciler = Reconciler(engine, scorer, interval_s=s.scorer.reconcile_interval_s)
    if reconciler.safe_sync("start-up") is None:
        log.error("start-up reconcile failed; serving %s until the next reconcile", scorer.version)
    scorer.mark_ready()
    reconciler.start()
    stack.callback(reconciler.stop)
    return scorer, reconciler


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
        publisher: ControlPublisher | None = None,
    ) -> None:
        """`engine`/`ranker`/`publisher` may be given (tests, `ranktune run`); otherwise `start()` makes them.

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
        self.publisher = publisher
        self._stack = ExitStack()
        self.scorer: Scorer | None = None
        self.reconciler: Reconciler | None = None
        self.listener: ControlListener | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        # the HTTP server's thread: health reports it dead if it ends while the process is not stopping
        self.http_heartbeat = Heartbeat("http", deadline_s=None)
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.api.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServeRole:
        """Load, reconcile, and serve; returns once the HTTP server accepts connections."""
        s = self.settings
        try:
            engine = self._engine
            if engine is None:
                engine = make_engine(s.storage.sqlalchemy_url, **s.storage.engine_options)
                self._stack.callback(engine.dispose)
            ensure_schema(engine)
            scorer, reconciler = start_scorer(self._stack, s, engine, ranker=self._ranker, metrics=self.metrics)
            self.scorer, self.reconciler = scorer, reconciler
            if self._control:
                if self.publisher is None:
                    self.publisher = ControlPublisher(s)
                    self._stack.callback(self.publisher.close)
                self.listener = ControlListener(s, self._on_control)
                self.listener.start()
                self._stack.callback(self.listener.stop)
            self.metrics.add_gauge_source(
                "ranktune_last_promotion_timestamp_seconds",
                "Unix time the champion last changed (promotion or rollback), from the registry as of the last "
                "reconcile.", lambda: reconciler.last_champion_change)
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
        family = socket.AF_INET6 if ":" in s.api.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.api.host, s.api.port))
        except OSError as exc:
            sock.close()
            raise StartupCheckFailed(f"cannot bind {s.api.host}:{s.api.port}: {exc} (set RANKTUNE_API_PORT)") from exc
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False, timeout_graceful_shutdown=5)
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.http_heartbeat.guard(functools.partial(server.run, [sock])),
                                        name="ranktune-http", daemon=True)
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

    def stop(self) -> None:
        """Stop HTTP first (no new requests), then the listener, the reconcile and the scorer."""
        self._stack.close()
        log.info("serve role stopped")
