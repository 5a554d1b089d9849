"""`Application`: the one object that owns ranktune's roles in a process and its life cycle.

Roles: `ingest` (Kafka -> DB), `scheduler` (retrain + drift jobs, training in a child process,
automatic promotion) and `serve` (the live scorer + HTTP API). The constructor builds nothing that
connects; `run()` checks, starts the roles inside an ExitStack, installs the signal handlers and waits;
`stop()` only sets a flag. Shutdown order: scheduler (no new runs) -> a running training finishes or
stops at its next step within the grace period -> ingest (finishes its batch, commits) -> serve (drains)
-> the ops port.

Observability: one `Metrics` and one `Health` per process. Every worker's heartbeat is adopted by
`Health`; the ops port (`RANKTUNE_OPS_PORT`, started first, stopped last) serves `/metrics`, `/healthz`
and `/readyz` whatever the roles, and the API serves the same. The watch loop judges the workers once
a second: a dead or stuck worker (see `daemon.health`) ends `run()` with exit code 1, so the
supervisor restarts the process.

The serving and training stacks (torch, transformers) are imported only by the roles that need them, so
an ingest-only process starts in seconds and stays small.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from adapters.errors import RanktuneError
from daemon import logs
from daemon.errors import StartupCheckFailed
from daemon.health import Health
from daemon.ingest.consumer import Ingestor
from daemon.ingest.stats import IngestStats
from daemon.ingest.writer import make_ingest_engine
from daemon.lifecycle import install_signal_handlers
from daemon.metrics import Metrics
from daemon.ops import OpsServer
from daemon.settings import Role, Settings
from daemon.training.drift import DriftMonitor, drift_job
from daemon.training.messages import CycleOutcome
from daemon.training.schedule import RetrainScheduler, TrainingCoordinator
from storage import events_repo, registry
from storage.db import ensure_schema, make_engine, session_scope
from storage.models import DriftReport, TrainingRun

if TYPE_CHECKING:  # the model stack: imported by the serve and scheduler roles only, when they start
    from daemon.serving.control import ControlListener, ControlPublisher, Reconciler
    from daemon.serving.role import ServeRole
    from daemon.serving.scorer import Scorer
    from daemon.training.trainer_process import ChildTarget, TrainerProcess

log = logging.getLogger(__name__)


class Application:
    """Runs the configured roles until SIGTERM/SIGINT or `stop()`."""

    def __init__(self, settings: Settings, roles: Sequence[Role] | None = None, *, control: bool = True,
                 create_topics: bool = True, trainer_target: ChildTarget | None = None,
                 exit_when_unhealthy: bool = True) -> None:
        """`control=False`: no control topic (replicas converge by their periodic reconcile only);
        `create_topics=False`: ingest does not create missing topics; `trainer_target`: the training
        child's entry point (default `daemon.training.cycle.child_main`; tests inject failing ones);
        `exit_when_unhealthy=False`: keep running (and answering /healthz 503) when a worker dies, for
        tests that look at the probes."""
        self.settings = settings
        self._control = control
        self._create_topics = create_topics
        self._trainer_target = trainer_target
        self.roles: tuple[Role, ...] = tuple(roles or settings.roles)
        self.stats = IngestStats()
        self.metrics = Metrics(roles=self.roles)
        self.health = Health(liveness_timeout_s=settings.liveness_timeout_s)
        self.metrics.watch(self.health)
        self.metrics.process.info({"roles": ",".join(self.roles)})
        self.ops: OpsServer | None = None
        self.exit_code = 0
        self._exit_when_unhealthy = exit_when_unhealthy
        self._not_ready: set[str] = set()
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
                while not self._stop.wait(1.0) and self._watch():
                    pass
                self.health.shutting_down()
                log.info("shutting down")
            return self.exit_code
        finally:
            if restore is not None:
                restore()

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        logs.bind(role=",".join(self.roles))
        # first, so start-up is observable (/healthz 200, /readyz 503 "starting"), and closed last
        self.ops = OpsServer(self.metrics, host=s.ops.host, port=s.ops.port).start()
        stack.callback(self.ops.stop)
        self.health.add_check("process", lambda: None if self.started.is_set() else "starting")
        self.engine = engine = self._checked_engine()
        stack.callback(engine.dispose)
        if self._control and {"serve", "scheduler"} & set(self.roles):  # they promote; ingest never does
            from daemon.serving.control import ControlPublisher

            self.publisher = ControlPublisher(s)
            stack.callback(self.publisher.close)
        # registered first, so closed last: serve drains after ingest and training have stopped
        if "serve" in self.roles:
            from daemon.serving.role import ServeRole

            ingest_stats = self.stats.snapshot if "ingest" in self.roles else None
            self.serve = ServeRole(s, engine=engine, metrics=self.metrics, ingest_stats=ingest_stats,
                                   schedule=self.schedule_info, control=self._control,
                                   publisher=self.publisher).start()
            stack.callback(self.serve.stop)
            assert self.serve.scorer is not None and self.serve.reconciler is not None
            self._watch_scorer(self.serve.scorer, self.serve.reconciler, self.serve.listener)
            self.health.adopt(self.serve.http_heartbeat)
        if "ingest" in self.roles:
            self._start_ingest(stack)
        if "scheduler" in self.roles:
            self._start_scheduler(stack, engine)

    def _start_ingest(self, stack: ExitStack) -> None:
        # an engine of its own, whose waits are bounded: a stuck database holds the batch and pauses the
        # partitions instead of stalling the poll loop past max_poll_interval
        engine = make_ingest_engine(self.settings.storage.sqlalchemy_url, self.settings.storage.engine_options,
                                    self.settings.kafka.max_poll_interval_ms)
        stack.callback(engine.dispose)
        self.ingestor = Ingestor(self.settings, engine, stats=self.stats, create_topics=self._create_topics)
        self.metrics.add_ingest_source(self.stats.snapshot)
        self.health.adopt(self.ingestor.heartbeat)
        thread = threading.Thread(target=self.ingestor.heartbeat.guard(self.ingestor.run), name="ranktune-ingest",
                                  daemon=True)
        thread.start()
        stack.callback(self._stop_ingest, thread)

    def _checked_engine(self) -> Engine:
        """Start-up checks that fail fast, each naming the fix."""
        s = self.settings
        engine = make_engine(s.storage.sqlalchemy_url, **s.storage.engine_options)
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
        # a loop judged dead or stuck will not finish its batch: its records are redelivered after the restart
        thread.join(5.0 if self.exit_code else self.settings.kafka.poll_timeout_ms / 1000 + 60)

    def _watch(self) -> bool:
        """Log what changed in the workers' health; False when the process cannot recover."""
        report = self.health.report()
        names = {p.split(":", 1)[0] for p in report.not_ready}
        for problem in report.not_ready:
            if problem.split(":", 1)[0] not in self._not_ready:
                log.warning("not ready: %s", problem)
        for name in sorted(self._not_ready - names):
            log.info("ready again: %s", name)
        self._not_ready = names
        if report.live or not self._exit_when_unhealthy:
            return True
        log.error("cannot recover (%s): stopping with exit code 1 so that the supervisor restarts the process",
                  "; ".join(report.fatal))
        self.exit_code = 1
        return False

    def _watch_scorer(self, scorer: Scorer, reconciler: Reconciler, listener: ControlListener | None) -> None:
        """Adopt the heartbeats of a scorer's workers and show its state in /readyz."""
        s = self.settings
        # a round busy longer than a request may wait fails every request in it
        self.health.adopt(scorer.heartbeat, deadline_s=s.scorer.request_timeout_s)
        self.health.adopt(reconciler.heartbeat, deadline_s=s.liveness_timeout_s)
        self.health.add_check("scorer", lambda: None if scorer.ready else "the model is not loaded, or stopping")
        self.health.add_detail("adapter_version", lambda: scorer.version)
        self.health.add_degraded("scorer", lambda: getattr(scorer, "degraded", None))
        if listener is not None:
            self.health.adopt(listener.heartbeat, deadline_s=s.liveness_timeout_s)
        self.health.add_detail("control", listener.state if listener is not None else lambda: "off")
        logs.bind(version=lambda: scorer.version)

    # --- scheduler role --------------------------------------------------------------------------
    def _start_scheduler(self, stack: ExitStack, engine: Engine) -> None:
        from daemon.training.cycle import child_main
        from daemon.training.trainer_process import TrainerProcess, close_interrupted_runs

        s = self.settings
        close_interrupted_runs(engine, s)  # rows a killed predecessor left `running`
        self.trainer = TrainerProcess(s, engine, target=self._trainer_target or child_main)
        self.coordinator = TrainingCoordinator(self._training_cycle, drift_cooldown_s=s.drift.cooldown_s)
        # busy while a run trains; each progress message of the child beats
        self.health.adopt(self.coordinator.heartbeat, deadline_s=s.train.max_seconds + s.liveness_timeout_s)
        self.monitor = self._drift_monitor(stack, engine)
        self.drift_check = drift_job(self.monitor, self.coordinator.request)
        self.scheduler = RetrainScheduler(
            retrain_job=self.retrain_job, drift_job=self.drift_check,
            retrain_interval_s=s.retrain.interval_s, drift_interval_s=s.drift.interval_s,
        )
        self.scheduler.start()
        self.health.adopt(self.scheduler.heartbeat)
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
            from daemon.serving.role import start_scorer

            scorer, reconciler = start_scorer(stack, self.settings, engine, metrics=self.metrics)
            self._watch_scorer(scorer, reconciler, None)

        def score_pairs(pairs: Sequence[tuple[str, str]]) -> Sequence[float]:
            return [float(x) for x in scorer.submit(pairs).result(self.settings.scorer.request_timeout_s).scores]

        d = self.settings.drift
        self.metrics.set_drift_thresholds({
            "score_psi": d.psi_threshold, "term_js": d.term_js_threshold, "unseen_item_share": d.unseen_threshold,
            "unseen_term_share": d.unseen_threshold, "ndcg10_drop": d.ndcg_drop})
        return DriftMonitor(self.settings, engine, score_pairs, on_report=self._observe_drift,
                            served_version=lambda: scorer.version)

    def _observe_drift(self, report: DriftReport, floors: Mapping[str, float]) -> None:
        drop = None
        if report.reference_ndcg is not None and report.recent_ndcg is not None:
            drop = report.reference_ndcg - report.recent_ndcg
        values = {"score_psi": report.score_psi, "term_js": report.term_js, "ndcg10_drop": drop,
                  "unseen_item_share": report.unseen_item_share, "unseen_term_share": report.unseen_term_share}
        outcome = "fired" if report.fired else "quiet" if floors else "insufficient_data"
        self.metrics.observe_drift(values=values, floors=floors, outcome=outcome, at=report.created_at.timestamp())

    def _observe_run(self, outcome: CycleOutcome, seconds: float) -> None:
        pairs_per_s = None
        if outcome.status == "succeeded" and self.engine is not None:
            with session_scope(self.engine) as s:  # once per run, never per scrape
                row = s.get(TrainingRun, outcome.run_id)
                pairs_per_s = row.examples_per_s if row is not None else None
        steps = outcome.summary.steps if outcome.summary is not None else None
        self.metrics.observe_training(status=outcome.status, seconds=seconds, steps=steps,
                                      pairs_per_second=pairs_per_s)
        if outcome.gate is not None:
            self.metrics.gate_verdicts.labels(outcome="passed" if outcome.gate.passed else "failed").inc()

    def _on_progress(self, event: dict[str, Any]) -> None:
        if self.coordinator is not None:
            self.coordinator.heartbeat.beat()
        if self.on_training_progress is not None:
            self.on_training_progress(event)

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
                self.metrics.observe_training(status="skipped", seconds=None, steps=None, pairs_per_second=None)
                return
        self.coordinator.request("schedule")

    def _training_cycle(self, trigger: str) -> str:
        from daemon.training.promotion import auto_promote

        assert self.trainer is not None and self.engine is not None
        t0 = time.monotonic()
        self.metrics.training_in_progress.set(1)
        try:
            outcome = self.trainer.run(trigger, on_progress=self._on_progress)
        finally:
            self.metrics.training_in_progress.set(0)
        self._observe_run(outcome, time.monotonic() - t0)
        publish = self.publisher.publish if self.publisher is not None else None
        promoted = auto_promote(outcome, engine=self.engine, auto=self.settings.gate.auto_promote,
                                artifacts_dir=self.settings.storage.artifacts_dir, publish=publish)
        if promoted and self.serve is not None and self.serve.reconciler is not None:
            self.serve.reconciler.safe_sync("promotion")  # do not wait for the control topic round-trip
        log.info("training %s (%s) %s in %.0fs%s", outcome.run_id, trigger, outcome.status,
                 time.monotonic() - t0, f"; promoted {promoted}" if promoted else "",
                 extra={"run_id": outcome.run_id})
        return outcome.status

