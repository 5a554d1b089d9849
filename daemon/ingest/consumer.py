"""The ingestion loop: poll raw bytes -> parse -> store -> dead-letter -> commit.

`Ingestor` owns the loop (quix-streams style): the constructor connects to nothing, `run()`
connects (backing off while the broker is down), loops until `stop()`, finishes the batch in
hand, and closes. Offsets are committed only after a batch's events are written in one
transaction and its rejects are acknowledged by the dead-letter topic, and they are committed
after every batch from the loop itself, so a rebalance finds nothing left to commit (kafka-python
3.x runs rebalance listeners on its IO thread, where a blocking `commit()` raises).

Per batch: the rejects are sent to the dead-letter topic first (without waiting), the valid events
are written, then the dead-letter acks are awaited and the offsets committed.

Outages:
- broker: kafka-python reconnects by itself; `poll()` returns nothing meanwhile. A failed commit is
  logged and not retried: those records are delivered again and absorbed as duplicates.
- a dead letter refused for good (a non-retriable error): the loop raises `DeadLetterFailed` without
  committing, the worker is dead, and the process exits 1; after the restart the batch comes again.
- database (or dead-letter topic): the batch is held, all assigned partitions are paused and the
  loop keeps polling (so the member stays in the group) while the write is retried with back-off;
  then the partitions resume. Nothing is committed for events not yet written.

Liveness: `last_progress` is touched on every loop turn; `healthy()` turns false when a call in the
loop hangs (kafka-python issue 3121: `commit()` can ignore its timeout).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy.engine import Engine

from daemon.errors import BrokerUnavailable, DeadLetterFailed
from daemon.health import Heartbeat
from daemon.ingest.deadletter import DeadLetterPublisher, Sent
from daemon.ingest.events import ParseConfig, Parsed, Rejection, future_limit, parse_record
from daemon.ingest.kafka_client import client_kwargs, ensure_topics
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.stats import IngestStats
from daemon.ingest.writer import DB_UNAVAILABLE, short_error, write_batch
from daemon.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_MS = 5000


class Backoff:
    """Exponential back-off with jitter: `next()` gives the delay to wait, `reset()` after a success."""

    def __init__(self, first_s: float = 0.2, max_s: float = 5.0) -> None:
        self.first_s, self.max_s, self._cur = first_s, max_s, first_s

    def next(self) -> float:
        delay, self._cur = self._cur, min(self.max_s, self._cur * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._cur = self.first_s


@dataclass
class _Batch:
    records: int
    parsed: list[Parsed]
    rejects: list[Rejection]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    written: bool = False
    failures: int = 0
    in_flight: list[Sent] = field(default_factory=list)  # rejects sent to the dead-letter topic, not yet acked


class _LogAssignments(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: logs only, never blocks or commits."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions revoked: %s", _fmt(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", _fmt(assigned) or "none")


def _where(rejects: list[Rejection], shown: int = 5) -> str:
    more = f" and {len(rejects) - shown} more" if len(rejects) > shown else ""
    return ", ".join(r.where for r in rejects[:shown]) + more


def _fmt(tps: Any) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


class Ingestor:
    """Consumes the feedback and catalog topics into the database. One instance, one `run()`.

    `run()` blocks (run it in a thread beside other roles); `stop()` and `healthy()` may be called
    from any thread; `stats` is shared with the metrics endpoint. Give it an engine of its own; on
    SQLite, `ingest_writer.bound_sqlite_wait` keeps a locked database from stalling the loop
    (`ranktune ingest` does both).
    """

    def __init__(
        self, settings: Settings, engine: Engine, *, stats: IngestStats | None = None, create_topics: bool = True
    ) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else IngestStats()
        self.last_progress = time.monotonic()
        # a turn that takes longer than max_poll_interval has already cost the group membership
        self.heartbeat = Heartbeat("ingest", deadline_s=settings.kafka.max_poll_interval_ms / 1000)
        self._engine = engine
        self._create_topics = create_topics
        self._parse_config = ParseConfig.from_settings(settings)
        self._pseudonymize = Pseudonymizer(settings.ingest.pseudonym_key)
        self._stop = threading.Event()
        self._running = False
        self._consumer: KafkaConsumer | None = None
        self._deadletter: DeadLetterPublisher | None = None
        self._pending: _Batch | None = None
        self._retry_at = 0.0
        self._backoff = Backoff()
        self._lag: dict[TopicPartition, int] = {}
        self._next_summary = 0.0

    # --- public API ------------------------------------------------------------------------------
    def run(self) -> None:
        """Connect, consume until `stop()`, finish the batch in hand, commit, close."""
        self._running = True
        self._touch()
        try:
            with ExitStack() as stack:
                if not self._connect(stack):
                    return
                self._next_summary = time.monotonic() + self.settings.ingest.stats_interval_s
                while not self._stop.is_set():
                    self._touch()
                    self._turn()
                    self._maybe_summary()
                if self._pending is not None and not self._process():
                    log.warning("stopping with %d records not stored: they will be consumed again on restart",
                                self._pending.records)
        finally:
            self._running = False
            log.info("ingest stopped: %s", self.stats.summary())

    def stop(self) -> None:
        """Ask the loop to stop after the current batch (safe from signal handlers and other threads)."""
        self._stop.set()

    def healthy(self) -> bool:
        """True while `run()` is looping and its last turn is younger than `liveness_timeout_s`."""
        return self._running and time.monotonic() - self.last_progress < self.settings.liveness_timeout_s

    # --- connection ------------------------------------------------------------------------------
    def _connect(self, stack: ExitStack) -> bool:
        s = self.settings
        backoff = Backoff(0.5, 10.0)
        while not self._stop.is_set():
            self._touch()
            try:
                if self._create_topics:
                    try:
                        ensure_topics(s, [s.kafka.feedback_topic, s.kafka.catalog_topic, s.kafka.deadletter_topic],
                                      timeout_ms=CONNECT_TIMEOUT_MS)
                    except BrokerUnavailable as exc:
                        log.warning("topics not checked: %s", exc)
                with ExitStack() as attempt:
                    consumer = KafkaConsumer(
                        **client_kwargs(s, client_id="ranktune-ingest"),
                        group_id=s.kafka.group,
                        enable_auto_commit=False,
                        auto_offset_reset="earliest",
                        session_timeout_ms=s.kafka.session_timeout_ms,
                        heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
                        max_poll_interval_ms=s.kafka.max_poll_interval_ms,
                        max_poll_records=s.kafka.poll_max_records,
                        bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
                        reconnect_backoff_max_ms=5000,
                    )
                    attempt.callback(consumer.close, autocommit=False)
                    deadletter = DeadLetterPublisher(s, flush_timeout_s=min(10.0, s.kafka.max_poll_interval_ms / 4000))
                    attempt.callback(deadletter.close)
                    consumer.subscribe([s.kafka.feedback_topic, s.kafka.catalog_topic], listener=_LogAssignments())
                    stack.push(attempt.pop_all())
            except KafkaError as exc:
                if not exc.retriable:  # e.g. SASL authentication failed: no point in retrying
                    raise
                delay = backoff.next()
                self.stats.add(broker_errors=1)
                log.warning("Kafka at %s unavailable (%s); retrying in %.1fs", s.kafka.bootstrap, exc, delay)
                self._stop.wait(delay)
                continue
            self._consumer, self._deadletter = consumer, deadletter
            log.info("consuming %s, %s as group %s", s.kafka.feedback_topic, s.kafka.catalog_topic, s.kafka.group)
            return True
        return False

    # --- the loop --------------------------------------------------------------------------------
    def _turn(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        if self._pending is not None:
            # held batch: stay in the group without fetching, retry when the back-off has passed
            consumer.pause(*consumer.assignment())
            wait_ms = int(max(0.0, self._retry_at - time.monotonic()) * 1000)
            records = self._poll(min(wait_ms, self.settings.kafka.poll_timeout_ms))
            for tp, recs in records.items():  # from a partition assigned before we paused it
                consumer.seek(tp, recs[0].offset)
            if time.monotonic() >= self._retry_at:
                self._process()
            return
        records = self._poll(self.settings.kafka.poll_timeout_ms)
        if records:
            self._pending = self._parse(records)
            self._process()

    def _poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        assert self._consumer is not None
        try:
            return self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            delay = self._backoff.next()
            self.stats.add(broker_errors=1)
            log.warning("poll failed (%s); retrying in %.1fs", exc, delay)
            self._stop.wait(delay)
            return {}

    def _parse(self, records: dict[TopicPartition, list[Any]]) -> _Batch:
        assert self._consumer is not None
        batch = _Batch(0, [], [], {})
        config, pseudonymize = self._parse_config, self._pseudonymize  # once per batch, not per record
        keep, now = batch.parsed.append, time.time()
        for tp, recs in records.items():
            topic, partition = tp.topic, tp.partition
            not_after = future_limit(config, (r.timestamp for r in recs), now)
            for r in recs:
                try:
                    out = parse_record(topic, partition, r.offset, r.key, r.value, config=config,
                                       pseudonymize=pseudonymize, timestamp_ms=r.timestamp, now=now,
                                       not_after=not_after)
                except Exception as exc:  # a parser bug must cost one record, never the loop
                    log.exception("%s[%d]@%d: the parser failed", topic, partition, r.offset)
                    out = Rejection(topic, partition, r.offset, r.key, r.value, "parse_error", type(exc).__name__)
                if type(out) is Parsed:
                    keep(out)
                else:
                    assert isinstance(out, Rejection)
                    log.warning("%s rejected (%s): %s", out.where, out.reason, out.message)
                    batch.rejects.append(out)
            batch.records += len(recs)
            batch.offsets[tp] = OffsetAndMetadata(recs[-1].offset + 1, "", -1)
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._lag[tp] = max(0, highwater - (recs[-1].offset + 1))
        assigned = self._consumer.assignment()
        self._lag = {tp: lag for tp, lag in self._lag.items() if tp in assigned}
        self.stats.add(consumed=batch.records)
        self.stats.set(lag=sum(self._lag.values()))
        return batch

    def _process(self) -> bool:
        """Write, dead-letter, commit the held batch. False (and partitions paused) if it must wait."""
        batch = self._pending
        assert batch is not None and self._deadletter is not None
        self._submit_rejects(batch)  # the dead-letter round trip overlaps the database write
        if not batch.written:
            try:
                self._write(batch)
            except DB_UNAVAILABLE as exc:
                self.stats.add(db_errors=1)
                self._hold(batch, f"database unavailable: {short_error(exc)}")
                return False
            self._submit_rejects(batch)  # rows the database refused
        if batch.in_flight:
            retry, dropped = self._deadletter.wait(batch.in_flight)
            self.stats.add(dead_lettered=len(batch.in_flight) - len(retry) - len(dropped),
                           deadletter_failed=len(dropped))
            unacked = {id(r) for r in retry + dropped}
            self.stats.add_reasons(rej.reason for rej, _ in batch.in_flight if id(rej) not in unacked)
            batch.in_flight, batch.rejects = [], retry
            if dropped:  # committing would lose these records without a trace: stop, uncommitted
                raise DeadLetterFailed(
                    f"{len(dropped)} rejected record(s) cannot be dead-lettered ({_where(dropped)}): stopping "
                    f"without committing the batch of {batch.records}; it is consumed again after the restart")
            if retry:
                self._hold(batch, f"dead-letter topic unavailable ({len(retry)} rejects unacknowledged)")
                return False
        self._commit(batch.offsets)
        self._pending = None
        self._backoff.reset()
        self.stats.add(batches=1)
        if self.stats.paused:
            assert self._consumer is not None
            self._consumer.resume(*self._consumer.paused())
            self.stats.set(paused=False)
            log.info("batch stored after %d retries; partitions resumed", batch.failures)
        return True

    def _submit_rejects(self, batch: _Batch) -> None:
        if batch.rejects:
            assert self._deadletter is not None
            batch.in_flight += self._deadletter.submit(batch.rejects)
            batch.rejects = []

    def _hold(self, batch: _Batch, reason: str) -> None:
        batch.failures += 1
        delay = self._backoff.next()
        self._retry_at = time.monotonic() + delay
        if not self.stats.paused:
            self.stats.set(paused=True)
            log.warning("holding a batch of %d records, partitions paused: %s", batch.records, reason)
        else:
            log.info("still waiting (attempt %d, next in %.1fs): %s", batch.failures, delay, reason)

    def _write(self, batch: _Batch) -> None:
        out = write_batch(self._engine, batch.parsed)
        batch.written = True
        batch.rejects += out.refused
        self.stats.add(stored=out.stored, duplicates=out.duplicates)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        owned = {tp: om for tp, om in offsets.items() if tp in assigned}
        if not owned:
            return
        try:
            self._consumer.commit(owned, timeout_ms=self.settings.kafka.max_poll_interval_ms // 2)
            self.stats.committed()
        except KafkaError as exc:
            self.stats.add(commit_failures=1)
            log.warning("commit of %s failed (%s): those records will be delivered again (duplicates absorbed)",
                        ", ".join(f"{tp.topic}[{tp.partition}]@{om.offset}" for tp, om in owned.items()), exc)

    # --- housekeeping ----------------------------------------------------------------------------
    def _touch(self) -> None:
        self.last_progress = time.monotonic()
        self.heartbeat.beat()

    def _maybe_summary(self) -> None:
        now = time.monotonic()
        if now >= self._next_summary:
            self._next_summary = now + self.settings.ingest.stats_interval_s
            log.info("ingest: %s", self.stats.summary())

