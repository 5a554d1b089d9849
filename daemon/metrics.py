"""Prometheus metrics of one serving process, on its own `CollectorRegistry`.

Never the global default registry: two replicas (or two test apps) in one process must not share
counters, and `GET /metrics` shows exactly this process's scorer. Ingestion counters join through
`add_ingest_source` when the ingest role runs in the same process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512)
_SWAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

IngestSource = Callable[[], Mapping[str, Any]]
"""Returns the ingestion counters, e.g. `IngestStats.snapshot` (keys consumed, stored, duplicates,
dead_lettered, lag)."""


class Metrics:
    """The serving metrics; every attribute is a prometheus_client metric on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ranktune_requests", "Score requests answered, by outcome (ok or an error code).", ["status"], registry=r
        )
        self.request_latency = Histogram(
            "ranktune_request_latency_seconds", "Score request latency, from arrival to answer.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "ranktune_batch_size", "Pairs per scorer round (one or more model forwards).",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("ranktune_scorer_queue_depth", "Requests waiting for the scorer.", registry=r)
        self.swaps = Counter(
            "ranktune_swaps", "Adapter hot-swaps, by outcome (ok, refused).", ["outcome"], registry=r
        )
        self.swap_duration = Histogram(
            "ranktune_swap_duration_seconds", "Swap time from request to activation (load, stage, probe).",
            buckets=_SWAP_BUCKETS, registry=r,
        )
        self.active_adapter = Info("ranktune_active_adapter", "The adapter version this scorer serves.", registry=r)
        self.ready = Gauge("ranktune_ready", "1 when the model is loaded and serving.", registry=r)
        self.training_runs = Counter(
            "ranktune_training_runs", "Training runs finished in this process, by status "
            "(succeeded, failed, cancelled, skipped).", ["status"], registry=r,
        )
        for outcome in ("ok", "refused"):
            self.swaps.labels(outcome=outcome)
        for status in ("succeeded", "failed", "cancelled", "skipped"):
            self.training_runs.labels(status=status)
        self.requests.labels(status="ok")

    def set_active(self, version: str) -> None:
        self.active_adapter.info({"version": version})

    def add_ingest_source(self, source: IngestSource) -> None:
        """Export ingestion counters from `source` (read at every scrape) as `ranktune_ingest_*`."""
        self.registry.register(_IngestCollector(source))

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
        ("dead_lettered", "ranktune_ingest_deadlettered", "Records rejected to the dead-letter topic."),
    )

    def __init__(self, source: IngestSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._source()
        except Exception:  # a scrape must not fail because the ingest role is restarting
            log.exception("ingest stats source failed; ingestion metrics left out of this scrape")
            return
        for key, name, doc in self._COUNTERS:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(snap.get(key, 0)))
            yield c
        g = GaugeMetricFamily("ranktune_ingest_lag", "Offsets behind the high-water marks, summed over partitions.")
        g.add_metric([], float(snap.get("lag", 0)))
        yield g

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
