"""Prometheus metrics of one ranktune process, on its own `CollectorRegistry`.

Never the global default registry: two replicas (or two test apps) in one process must not share
counters. The `Application` makes one `Metrics` per process and hands it to every role; the ops port
and, when the process serves, the API's `/metrics` render the same registry. Names follow Prometheus
conventions: base units in the name (`_seconds`, `_pairs`, `_offsets`), `_total` on counters (the
client library adds it to `Counter`s), `_info` on info metrics.

Values that live elsewhere are read at scrape time from in-memory sources (the ingestion counters,
the health registry); nothing here queries the database.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from daemon.health import Health

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512)
_SWAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TRAINING_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)

DRIFT_STATISTICS = ("score_psi", "term_js", "unseen_item_share", "unseen_term_share", "ndcg10_drop")
RUN_STATUSES = ("succeeded", "failed", "cancelled", "skipped")
RECONCILE_OUTCOMES = ("unchanged", "swapped", "refused", "failed")

IngestSource = Callable[[], Mapping[str, Any]]
"""Returns the ingestion counters, e.g. `IngestStats.snapshot` (keys consumed, stored, duplicates,
dead_lettered, dead_letter_reasons, lag, ...)."""


class Metrics:
    """Every metric of the process; attributes are prometheus_client metrics.

    Only the metrics of the roles the process runs are registered on `self.registry` (and exported): an
    ingest-only process has no scorer, so it exports no `ranktune_ready 0` for an alert to misread. The
    serving metrics come with a scorer (roles `serve` and `scheduler`, whose drift job scores), the
    training and drift metrics with `scheduler`; `roles=None` registers them all.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, roles: Iterable[str] | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.health: Health | None = None
        self._ingest: _IngestCollector | None = None
        # each group is created unregistered, and registered below if its role runs here
        serving = self._serving_metrics()
        training = self._training_metrics()
        self.process = Info("ranktune_process", "The roles this process runs.", registry=self.registry)
        # process_start_time_seconds (restarts), process_resident_memory_bytes, process_cpu_seconds_total
        ProcessCollector(registry=self.registry)
        run = set(roles) if roles is not None else {"ingest", "scheduler", "serve"}
        for metric in (serving if run & {"serve", "scheduler"} else []) + (training if "scheduler" in run else []):
            self.registry.register(metric)
        self._prime_labels()

    def _serving_metrics(self) -> list[MetricWrapperBase]:
        """The scorer's metrics (requests, batches, swaps, reconciles, the served and champion versions)."""
        self.requests = Counter(
            "ranktune_requests", "Score requests answered, by outcome (ok or an error code).", ["status"], registry=None
        )
        self.request_latency = Histogram(
            "ranktune_request_latency_seconds", "Score request latency, from arrival to answer.",
            buckets=_LATENCY_BUCKETS, registry=None,
        )
        self.batch_size = Histogram(
            "ranktune_scorer_batch_pairs", "Pairs per scorer round (one or more model forwards).",
            buckets=_BATCH_BUCKETS, registry=None,
        )
        self.queue_depth = Gauge("ranktune_scorer_queue_depth", "Requests waiting for the scorer.", registry=None)
        self.explored = Counter(
            "ranktune_explored_responses", "Score responses shown in a perturbed order on purpose (exploration), "
            "by mode.", ["mode"], registry=None,
        )
        self.swaps = Counter(
            "ranktune_swaps", "Adapter hot-swaps, by outcome (ok, refused).", ["outcome"], registry=None
        )
        self.swap_duration = Histogram(
            "ranktune_swap_duration_seconds", "Swap time from request to activation (load, stage, probe).",
            buckets=_SWAP_BUCKETS, registry=None,
        )
        self.reconciles = Counter(
            "ranktune_reconciles", "Reconciles of the served version with the registry's champion, by outcome "
            "(unchanged, swapped, refused, failed).", ["outcome"], registry=None,
        )
        self.active_adapter = Info("ranktune_active_adapter", "The adapter version this scorer serves.", registry=None)
        self.ready = Gauge("ranktune_ready", "1 when the model is loaded and serving.", registry=None)
        self.champion = Info("ranktune_champion", "The registry's champion version, as this process last read it.",
                             registry=None)
        self.champion_ndcg = Gauge(
            "ranktune_champion_holdout_ndcg", "Holdout NDCG@10 the champion had when it was trained "
            "(NaN for the base model).", registry=None)
        return [self.requests, self.request_latency, self.batch_size, self.queue_depth, self.explored, self.swaps,
                self.swap_duration, self.reconciles, self.active_adapter, self.ready, self.champion,
                self.champion_ndcg]

    def _training_metrics(self) -> list[MetricWrapperBase]:
        """The scheduler's metrics: training runs, gate verdicts and drift checks."""
        self.training_runs = Counter(
            "ranktune_training_runs", "Training runs finished in this process, by status "
            "(succeeded, failed, cancelled, skipped).", ["status"], registry=None,
        )
        self.training_duration = Histogram(
            "ranktune_training_duration_seconds", "Wall-clock time of finished training runs (not skipped ones).",
            buckets=_TRAINING_BUCKETS, registry=None,
        )
        self.training_steps = Gauge("ranktune_training_steps", "Optimizer steps of the last succeeded run.",
                                    registry=None)
        self.training_pairs_per_second = Gauge(
            "ranktune_training_pairs_per_second", "Training throughput of the last succeeded run "
            "((query, item) pairs per second of optimisation).", registry=None)
        self.training_in_progress = Gauge("ranktune_training_in_progress", "1 while a training run is running.",
                                          registry=None)
        self.gate_verdicts = Counter(
            "ranktune_gate_verdicts", "Gate decisions on candidates, by outcome (passed, failed).", ["outcome"],
            registry=None,
        )
        self.drift_value = Gauge(
            "ranktune_drift_statistic", "The latest drift report's value of each statistic (NaN: not measured).",
            ["statistic"], registry=None)
        self.drift_threshold = Gauge(
            "ranktune_drift_threshold", "Configured threshold of each drift statistic.", ["statistic"], registry=None)
        self.drift_floor = Gauge(
            "ranktune_drift_noise_floor", "Noise floor of each statistic in the latest report; it fires above "
            "threshold + floor.", ["statistic"], registry=None)
        self.drift_checks = Counter(
            "ranktune_drift_checks", "Drift checks, by outcome (fired, quiet, insufficient_data).", ["outcome"],
            registry=None)
        self.drift_last_check = Gauge(
            "ranktune_drift_last_check_timestamp_seconds", "Unix time of the latest drift check.", registry=None)
        return [self.training_runs, self.training_duration, self.training_steps, self.training_pairs_per_second,
                self.training_in_progress, self.gate_verdicts, self.drift_value, self.drift_threshold,
                self.drift_floor, self.drift_checks, self.drift_last_check]

    def _prime_labels(self) -> None:
        """Create every known label value at 0, so that rates and alerts see a series from the start."""
        for outcome in ("ok", "refused"):
            self.swaps.labels(outcome=outcome)
        for mode in ("swap_adjacent", "shuffle_top_k"):
            self.explored.labels(mode=mode)
        for outcome in RECONCILE_OUTCOMES:
            self.reconciles.labels(outcome=outcome)
        for status in RUN_STATUSES:
            self.training_runs.labels(status=status)
        for outcome in ("passed", "failed"):
            self.gate_verdicts.labels(outcome=outcome)
        for outcome in ("fired", "quiet", "insufficient_data"):
            self.drift_checks.labels(outcome=outcome)
        self.requests.labels(status="ok")

    # --- setters used by the roles -----------------------------------------------------------------
    def set_active(self, version: str) -> None:
        self.active_adapter.info({"version": version})

    def set_champion(self, version: str, holdout_ndcg: float | None) -> None:
        self.champion.info({"version": version})
        self.champion_ndcg.set(math.nan if holdout_ndcg is None else holdout_ndcg)

    def set_drift_thresholds(self, thresholds: Mapping[str, float]) -> None:
        for name, value in thresholds.items():
            self.drift_threshold.labels(statistic=name).set(value)

    def observe_drift(self, *, values: Mapping[str, float | None], floors: Mapping[str, float],
                      outcome: str, at: float) -> None:
        """One drift report: each statistic's value and noise floor (NaN where not measured)."""
        for name in DRIFT_STATISTICS:
            value = values.get(name)
            self.drift_value.labels(statistic=name).set(math.nan if value is None else value)
            self.drift_floor.labels(statistic=name).set(floors.get(name, math.nan))
        self.drift_checks.labels(outcome=outcome).inc()
        self.drift_last_check.set(at)

    def observe_training(self, *, status: str, seconds: float | None, steps: int | None,
                         pairs_per_second: float | None) -> None:
        """One finished training run (steps and throughput are kept for succeeded runs only)."""
        self.training_runs.labels(status=status).inc()
        if status != "skipped" and seconds is not None:
            self.training_duration.observe(seconds)
        if status == "succeeded":
            if steps is not None:
                self.training_steps.set(steps)
            if pairs_per_second is not None:
                self.training_pairs_per_second.set(pairs_per_second)

    # --- sources read at scrape time ---------------------------------------------------------------
    def add_ingest_source(self, source: IngestSource) -> None:
        """Export ingestion counters from `source` (read at every scrape) as `ranktune_ingest_*`.

        Idempotent: a second call replaces the source (the API and the Application may both add it)."""
        if self._ingest is None:
            self._ingest = _IngestCollector(source)
            self.registry.register(self._ingest)
        else:
            self._ingest.source = source

    def watch(self, health: Health) -> None:
        """Export `health`'s judgement (`ranktune_worker_*`, `ranktune_process_*`) and let every HTTP
        surface that renders these metrics answer `/healthz` and `/readyz` from it."""
        if self.health is None:
            self.registry.register(_HealthCollector(health))
        self.health = health

    def add_gauge_source(self, name: str, documentation: str, source: Callable[[], float | None]) -> None:
        """Export `source()` (read at every scrape; None = no sample) as gauge `name`."""
        self.registry.register(_GaugeCollector(name, documentation, source))

    def render(self) -> bytes:
        """The exposition text for `GET /metrics`."""
        return generate_latest(self.registry)


class _IngestCollector(Collector):
    _COUNTERS = (
        ("consumed", "ranktune_ingest_consumed", "Records consumed from the event topics."),
        ("stored", "ranktune_ingest_stored", "Records written to the database."),
        ("duplicates", "ranktune_ingest_duplicates", "Records already stored (or superseded)."),
        ("deadletter_failed", "ranktune_ingest_deadletter_failed",
         "Rejected records that could not be published to the dead-letter topic (lost, logged)."),
        ("batches", "ranktune_ingest_batches", "Batches stored and committed."),
        ("commit_failures", "ranktune_ingest_commit_failures", "Offset commits that failed (records redelivered)."),
        ("db_errors", "ranktune_ingest_db_errors", "Batch writes that failed because the database was unavailable."),
        ("broker_errors", "ranktune_ingest_broker_errors", "Failed connects and polls."),
    )

    def __init__(self, source: IngestSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.source()
        except Exception:  # a scrape must not fail because the ingest role is restarting
            log.exception("ingest stats source failed; ingestion metrics left out of this scrape")
            return
        for key, name, doc in self._COUNTERS:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(snap.get(key, 0)))
            yield c
        dead = CounterMetricFamily("ranktune_ingest_deadlettered", "Records rejected to the dead-letter topic, "
                                   "by reason code (see daemon/ingest/events.py).", labels=["reason"])
        reasons: Mapping[str, int] = snap.get("dead_letter_reasons") or {}
        for reason, count in sorted(reasons.items()):
            dead.add_metric([reason], float(count))
        if not reasons and snap.get("dead_lettered"):  # a source without reasons: one unlabelled total
            dead.add_metric(["unknown"], float(snap["dead_lettered"]))
        yield dead
        lag = GaugeMetricFamily("ranktune_ingest_lag_offsets",
                                "Offsets behind the high-water marks, summed over the assigned partitions.")
        lag.add_metric([], float(snap.get("lag", 0)))
        yield lag
        paused = GaugeMetricFamily("ranktune_ingest_paused",
                                   "1 while partitions are paused because the database or dead-letter topic is down.")
        paused.add_metric([], 1.0 if snap.get("paused") else 0.0)
        yield paused

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _HealthCollector(Collector):
    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        report = self._health.report()
        up = GaugeMetricFamily("ranktune_worker_up", "1 while the worker is alive and within its heartbeat "
                               "deadline, 0 when it died or stalled.", labels=["worker"])
        age = GaugeMetricFamily("ranktune_worker_heartbeat_age_seconds", "Seconds the worker has been busy "
                                "without a heartbeat (0 while it waits for work).", labels=["worker"])
        deadline = GaugeMetricFamily("ranktune_worker_deadline_seconds", "Longest the worker may be busy without "
                                     "a heartbeat before it counts as stalled.", labels=["worker"])
        for w in report.workers:
            up.add_metric([w.name], 1.0 if w.up else 0.0)
            age.add_metric([w.name], w.age_s)
            if w.deadline_s is not None:
                deadline.add_metric([w.name], w.deadline_s)
        degraded = GaugeMetricFamily("ranktune_degraded", "1 while a component serves in a degraded mode "
                                     "(e.g. the scorer fell back to the base model).", labels=["component"])
        for name, reason in report.degraded.items():
            degraded.add_metric([name], 1.0 if reason else 0.0)
        live = GaugeMetricFamily("ranktune_process_live", "1 unless the process cannot recover (/healthz).")
        live.add_metric([], 1.0 if report.live else 0.0)
        ready = GaugeMetricFamily("ranktune_process_ready", "1 when every worker and check is fine (/readyz).")
        ready.add_metric([], 1.0 if report.ready else 0.0)
        yield from (up, age, deadline, degraded, live, ready)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _GaugeCollector(Collector):
    def __init__(self, name: str, documentation: str, source: Callable[[], float | None]) -> None:
        self._name, self._doc, self._source = name, documentation, source

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(self._name, self._doc)
        try:
            value = self._source()
        except Exception:  # a scrape must not fail because the database blinked
            value = None
        if value is not None:
            g.add_metric([], float(value))
        yield g

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc)
