"""`Application`: the one object that owns ranktune's roles in a process and its life cycle.

Roles: `ingest` (Kafka -> DB), `scheduler` (retrain + drift jobs, training in a child process,
automatic promotion) and `serve` (the live scorer + HTTP API). The constructor builds nothing that
connects; `run()` checks, starts the roles inside an ExitStack, installs the signal handlers and waits;
`stop()` only sets a flag. Shutdown order: scheduler (no new runs) -> a running training finishes or
stops at its next step within the grace period -> ingest (finishes its batch, commits) -> serve (drains).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from sqlalchemy.engine import Engine

from adapters.errors import RanktuneError
from daemon.errors import StartupCheckFailed
from daemon.ingest.consumer import Ingestor
from daemon.ingest.stats import IngestStats
from daemon.ingest.writer import bound_sqlite_wait
from daemon.lifecycle import install_signal_handlers
from daemon.serving.control import ControlPublisher
from daemon.serving.role import ServeRole, start_scorer
from daemon.settings import Role, Settings
from daemon.training.cycle import child_main
from daemon.training.drift import DriftMonitor, drift_job
from daemon.training.promotion import auto_promote
from daemon.training.schedule import RetrainScheduler, TrainingCoordinator
from daemon.training.trainer_process import ChildTarget, TrainerProcess
from storage import events_repo, registry
from storage.db import ensure_schema, make_engine, session_scope

log = logging.getLogger(__name__)


class Application:
    """Runs the configured roles until SIGTERM/SIGINT or `stop()`."""

    def __init__(self, settings: Settings, roles: Sequence[Role] | None = None, *, control: bool = True,
                 create_topics: bool = True, trainer_target: ChildTarget = child_main) -> None:
        """`control=False`: no control topic (replicas converge by their periodic reconcile only);
        `create_topics=False`: ingest does not create missing topics; `trainer_target`: the training
        child's entry point (tests inject failing ones)."""
        self.settings = settings
        self._control = control
        self._create_topics = create_topics
        self._trainer_target = trainer_target
        self.roles: tuple[Role, ...] = tuple(roles or settings.roles)
        self.stats = IngestStats()
        self._stop = threading.Event()
        self.engine: Engine | None = None
        self.ingestor: Ingestor | None = None
        self.publisher: ControlPublisher | None = None
        self.serve: ServeRole | None = None
        self.coordinator: TrainingCoordinator | None = None
        self.scheduler: RetrainScheduler | None = None
        self.trainer: TrainerProcess | None = None
        self.monitor: DriftMonitor | None = None
        self.drift_check: Callable[[], None] | None = None  # the scheduler's drift job
        self.started = threading.Event()
        # the training child logs its own progress; a live display (the demo) can also listen here
        self.on_training_progress: Callable[[dict[str, Any]], None] | None = None

    # --- life cycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run()` to shut down (signal-safe: only sets a flag)."""
        self._stop.set()

    def run(self, *, install_signals: bool = True) -> int:
        restore = install_signal_handlers(self.stop) if install_signals else None
        try:
            with ExitStack() as stack:
                self._start(stack)
                self.started.set()
                log.info("ranktune running: roles %s", ",".join(self.roles))
                while not self._stop.wait(1.0):
                    self._watch()
                log.info("shutting down")
            return 0
        finally:
            if restore is not None:
                restore()

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        self.engine = engine = self._checked_engine()
        stack.callback(engine.dispose)
        if self._control:
            self.publisher = ControlPublisher(s)
            stack.callback(self.publisher.close)
        # registered first, so closed last: serve drains after ingest and training have stopped
        if "serve" in self.roles:
            self.serve = ServeRole(s, engine=engine, ingest_stats=self.stats.snapshot, schedule=self.schedule_info,
                                   control=self._control, publisher=self.publisher).start()
            stack.callback(self.serve.stop)
        if "ingest" in self.roles:
            self._start_ingest(stack)
        if "scheduler" in self.roles:
            self._start_scheduler(stack, engine)

    def _start_ingest(self, stack: ExitStack) -> None:
        # an engine of its own, whose SQLite lock wait is bounded: a locked database holds the batch and
        # pauses the partitions instead of stalling the poll loop past max_poll_interval
        engine = make_engine(self.settings.storage.sqlalchemy_url)
        stack.callback(engine.dispose)
        bound_sqlite_wait(engine, min(5.0, self.settings.kafka.max_poll_interval_ms / 4000))
        self.ingestor = Ingestor(self.settings, engine, stats=self.stats, create_topics=self._create_topics)
        thread = threading.Thread(target=self.ingestor.run, name="ranktune-ingest", daemon=True)
        thread.start()
        stack.callback(self._stop_ingest, thread)

    def _checked_engine(self) -> Engine:
        """Start-up checks that fail fast, each naming the fix."""
        s = self.settings
        engine = make_engine(s.storage.sqlalchemy_url)
        try:
            ensure_schema(engine)
        except RanktuneError:
            engine.dispose()
            raise
        if {"serve", "scheduler"} & set(self.roles):
            path = s.model.base_path
            if not (path / "config.json").is_file():
                engine.dispose()
                raise StartupCheckFailed(f"base model folder {path} has no config.json: set RANKTUNE_MODEL_PATH "
                                         "to a local Hugging Face model folder")
        if self._control and {"serve", "scheduler"} & set(self.roles):
            self._check_broker()  # control notices; ingest alone waits for the broker with back-off
        s.storage.artifacts_dir.mkdir(parents=True, exist_ok=True)
        return engine

    def _check_broker(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        from daemon.ingest.kafka_client import client_kwargs

        try:
            kwargs = client_kwargs(self.settings, client_id="ranktune-check")
            admin = KafkaAdminClient(request_timeout_ms=10000, **kwargs)
            admin.close()
        except KafkaError as exc:
            raise StartupCheckFailed(f"Kafka broker at {self.settings.kafka.bootstrap} is not reachable ({exc}): "
                                     "check RANKTUNE_KAFKA_BOOTSTRAP and the security settings") from None

    def _stop_ingest(self, thread: threading.Thread) -> None:
        assert self.ingestor is not None
        self.ingestor.stop()
        thread.join(self.settings.kafka.poll_timeout_ms / 1000 + 60)

    def _watch(self) -> None:
        if self.ingestor is not None and not self.ingestor.healthy():
            log.warning("ingest loop made no progress for %.0fs", self.settings.liveness_timeout_s)

    # --- scheduler role --------------------------------------------------------------------------
    def _start_scheduler(self, stack: ExitStack, engine: Engine) -> None:
        s = self.settings
        self.trainer = TrainerProcess(s, engine, target=self._trainer_target)
        self.coordinator = TrainingCoordinator(self._training_cycle, drift_cooldown_s=s.drift.cooldown_s)
        self.monitor = self._drift_monitor(stack, engine)
        self.drift_check = drift_job(self.monitor, self.coordinator.request)
        self.scheduler = RetrainScheduler(
            retrain_job=self.retrain_job, drift_job=self.drift_check,
            retrain_interval_s=s.retrain.interval_s, drift_interval_s=s.drift.interval_s,
        )
        self.scheduler.start()
        stack.callback(self._stop_scheduler)

    def _stop_scheduler(self) -> None:
        assert self.scheduler is not None and self.coordinator is not None and self.trainer is not None
        self.scheduler.shutdown()
        self.coordinator.close()
        grace = self.settings.shutdown_grace_s
        if self.coordinator.busy:
            log.info("waiting up to %.0fs for the running training to finish", grace)
            if not self.coordinator.wait_idle(grace):
                log.info("training still running: asking it to stop at its next step")
                self.trainer.request_stop()
                self.coordinator.wait_idle(grace + 30)

    def _drift_monitor(self, stack: ExitStack, engine: Engine) -> DriftMonitor:
        if self.serve is not None and self.serve.scorer is not None:
            scorer = self.serve.scorer
        else:  # scheduler without serve: a scorer of its own (no HTTP) follows the champion for drift scores
            scorer, _ = start_scorer(stack, self.settings, engine)

        def score_pairs(pairs: Sequence[tuple[str, str]]) -> Sequence[float]:
            return [float(x) for x in scorer.submit(pairs).result(self.settings.scorer.request_timeout_s).scores]

        return DriftMonitor(self.settings, engine, score_pairs)

    def _count_run(self, status: str) -> None:
        if self.serve is not None:
            self.serve.metrics.training_runs.labels(status=status).inc()

    def schedule_info(self) -> dict[str, Any]:
        """Next run times and the training in progress, for `GET /v1/status`."""
        if self.scheduler is None or self.coordinator is None:
            return {"known": True, "scheduler": False}
        st = self.coordinator.state
        return {"known": True, "scheduler": True, "next_run": self.scheduler.next_run_times(),
                "training": st.running, "queued": st.queued, "runs_started": st.started,
                "auto_promote": self.settings.gate.auto_promote}

    def retrain_job(self) -> None:
        """Scheduled: retrain when enough new labelled events arrived since the last run's data."""
        assert self.engine is not None and self.coordinator is not None
        with session_scope(self.engine) as s:
            since = registry.last_data_cutoff(session=s)
            new = events_repo.count_feedback(session=s, since=since, labelled_only=True)
            need = self.settings.retrain.min_events
            if new < need:
                registry.start_run(session=s, trigger="schedule", status="skipped",
                                   reason=f"{new} new labelled events since the last run; need {need}")
                self._count_run("skipped")
                return
        self.coordinator.request("schedule")

    def _training_cycle(self, trigger: str) -> str:
        assert self.trainer is not None and self.engine is not None
        t0 = time.monotonic()
        outcome = self.trainer.run(trigger, on_progress=self.on_training_progress)
        self._count_run(outcome.status)
        publish = self.publisher.publish if self.publisher is not None else None
        promoted = auto_promote(outcome, engine=self.engine, auto=self.settings.gate.auto_promote,
                                artifacts_dir=self.settings.storage.artifacts_dir, publish=publish)
        if promoted and self.serve is not None and self.serve.reconciler is not None:
            self.serve.reconciler.safe_sync("promotion")  # do not wait for the control topic round-trip
        log.info("training %s (%s) %s in %.0fs%s", outcome.run_id, trigger, outcome.status,
                 time.monotonic() - t0, f"; promoted {promoted}" if promoted else "")
        return outcome.status

