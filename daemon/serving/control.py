"""Keeping every scorer replica on the registry's champion: control topic + periodic DB reconcile.

The database is the source of truth; the control topic only says "look now". A promote or rollback
commits the alias move first, then publishes

    {"action": "promote" | "rollback", "version": "v0007", "from": "v0006", "ts": "<ISO 8601 UTC>"}

on `settings.kafka.control_topic` (key `champion`, so all notices share one partition and stay ordered).
Each replica's `ControlListener` reads the topic in a consumer group of its own (every replica sees
every notice) and calls `Reconciler.sync`, which re-reads the champion and swaps if it differs from
the served version. Re-reading instead of trusting the message makes out-of-order or stale notices
harmless; the `Reconciler`'s own timer (every `reconcile_interval_s`, and once at start-up) heals
notices that were missed while a replica was down or the broker was unreachable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from adapters.artifacts import LoadedAdapter, load_adapter, validate_version_name
from adapters.errors import SwapRefused
from daemon.errors import BrokerUnavailable
from daemon.health import Heartbeat
from daemon.ingest.kafka_client import client_kwargs, ensure_topics
from daemon.serving.scorer import Loader, Scorer
from daemon.settings import Settings
from daemon.status import holdout_ndcg
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

ACTIONS = ("promote", "rollback")
_KEY = b"champion"


@dataclass(frozen=True)
class ControlMessage:
    """One notice on the control topic."""

    action: str
    version: str
    from_version: str | None = None
    ts: str = ""

    def to_bytes(self) -> bytes:
        body = {"action": self.action, "version": self.version, "from": self.from_version,
                "ts": self.ts or datetime.now(UTC).isoformat()}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ControlMessage:
        """Parse and check a notice; ValueError names what is wrong (a tombstone, nesting too deep, ...)."""
        if raw is None:
            raise ValueError("null value (tombstone)")
        try:
            body = json.loads(raw)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if not isinstance(body, dict):
            raise ValueError("control message is not a JSON object")
        action, version = body.get("action"), body.get("version")
        if action not in ACTIONS:
            raise ValueError(f"unknown control action {action!r}")
        if not isinstance(version, str):
            raise ValueError("control message has no version")
        check_version(version)
        frm = body.get("from")
        return cls(action=action, version=version, from_version=frm if isinstance(frm, str) else None,
                   ts=str(body.get("ts", "")))


def check_version(version: str) -> str:
    """`base` or a valid version name (so no version ever names a path outside the artifacts folder)."""
    return version if version == registry.BASE else validate_version_name(version)


# --- publishing ----------------------------------------------------------------------------------
class ControlPublisher:
    """Publishes control notices; connects on first use and keeps the producer."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def publish(self, message: ControlMessage) -> None:
        """Send and wait for the broker's ack; raises BrokerUnavailable."""
        s = self._settings
        with self._lock:
            try:
                if self._producer is None:
                    ensure_topics(s, [s.kafka.control_topic], timeout_ms=int(self._timeout_s * 1000))
                    self._producer = KafkaProducer(
                        **client_kwargs(s, client_id="ranktune-control"), acks="all",
                        max_block_ms=int(self._timeout_s * 1000), request_timeout_ms=int(self._timeout_s * 1000),
                    )
                self._producer.send(s.kafka.control_topic, key=_KEY, value=message.to_bytes()).get(self._timeout_s)
            except KafkaError as exc:
                self._close_locked()
                raise BrokerUnavailable(
                    f"cannot publish on {s.kafka.control_topic} at {s.kafka.bootstrap}: {exc}") from exc
        log.info("published %s %s on %s", message.action, message.version, s.kafka.control_topic)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception:
                log.debug("closing the control producer failed", exc_info=True)
            self._producer = None


# --- loading what the registry recorded -----------------------------------------------------------
def load_registered(engine: Engine, artifacts_dir: Path, version: str) -> LoadedAdapter:
    """Read `version`'s artifact and verify it against the checksum the registry recorded."""
    validate_version_name(version)
    with session_scope(engine) as s:
        checksum = registry.get_version(session=s, version=version).checksum
    return load_adapter(artifacts_dir, version, expected_checksum=checksum)


def registered_loader(engine: Engine, artifacts_dir: Path) -> Loader:
    """A scorer `Loader` over the registry and the artifacts folder."""
    return lambda version: load_registered(engine, artifacts_dir, version)


# --- reconciling ---------------------------------------------------------------------------------
class Reconciler:
    """Brings `scorer` to the registry's champion: on demand (`sync`) and every `interval_s` in a thread.

    A version that was refused is not retried before `retry_refused_s`, so a corrupt champion costs one
    error line per period, not a reload every few seconds; the scorer keeps serving what it had, and
    says so in `scorer.degraded` (shown by `/readyz` and `ranktune_degraded{component="scorer"}`) until
    it serves the champion again.

    Each sync also reads when the champion last changed (`last_champion_change`, Unix seconds), so the
    `/metrics` gauge built on it reads a value, not the database, at every scrape.
    """

    def __init__(self, engine: Engine, scorer: Scorer, *, interval_s: float, retry_refused_s: float | None = None):
        self._engine = engine
        self._scorer = scorer
        self.interval_s = interval_s
        self.retry_refused_s = retry_refused_s if retry_refused_s is not None else max(60.0, 4 * interval_s)
        self._lock = threading.Lock()
        self._refused: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._champion_seen: str | None = None
        self.last_champion_change: float | None = None
        self.heartbeat = Heartbeat("reconciler")  # busy = one sync (a swap included)

    def sync(self, reason: str = "on demand", *, force: bool = False) -> str:
        """Swap to the DB champion if it is not served; returns the version served afterwards.

        Raises SwapRefused when the champion cannot be served (the old version keeps serving), and
        storage errors when the database cannot be read.
        """
        with self._lock:  # re-read under the lock: the last sync after the last commit always wins
            with session_scope(self._engine) as s:
                champion = registry.champion(session=s)
                self._note_champion(s, champion)
                changed = registry.last_champion_change(session=s)
            self.last_champion_change = changed.timestamp() if changed is not None else None
            if champion == self._scorer.version:
                self._scorer.metrics.reconciles.labels(outcome="unchanged").inc()
                self._scorer.degraded = None
                return champion
            refused_at = self._refused.get(champion)
            if refused_at is not None and not force and time.monotonic() - refused_at < self.retry_refused_s:
                self._scorer.metrics.reconciles.labels(outcome="refused").inc()
                raise SwapRefused(f"champion {champion} was refused recently; still serving {self._scorer.version}")
            log.info("reconcile (%s): champion is %s, serving %s: swapping", reason, champion, self._scorer.version)
            try:
                result = self._scorer.swap_to(champion)
            except SwapRefused as exc:
                self._refused[champion] = time.monotonic()
                self._scorer.metrics.reconciles.labels(outcome="refused").inc()
                self._scorer.degraded = f"champion {champion} cannot be served ({exc}); serving {self._scorer.version}"
                raise
            self._refused.pop(champion, None)
            self._scorer.degraded = None
            self._scorer.metrics.reconciles.labels(outcome="swapped").inc()
            log.info("now serving %s (swap took %.3fs)", champion, result.seconds)
            return champion

    def _note_champion(self, session: Session, champion: str) -> None:
        """Export the champion and its holdout NDCG (read from the registry only when it changes)."""
        if champion == self._champion_seen:
            return
        ndcg = None
        if champion != registry.BASE:
            try:
                ndcg = holdout_ndcg(registry.get_version(session=session, version=champion).metrics)
            except Exception:  # a metric must never stop a reconcile
                log.warning("holdout NDCG of champion %s not readable", champion, exc_info=True)
        self._scorer.metrics.set_champion(champion, ndcg)
        self._champion_seen = champion

    def start(self) -> None:
        self._thread = threading.Thread(target=self.heartbeat.guard(self._loop), name="ranktune-reconcile",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while True:
            self.heartbeat.idle()
            if self._stop.wait(self.interval_s):
                return
            self.heartbeat.beat()
            self.safe_sync("periodic")

    def safe_sync(self, reason: str) -> str | None:
        """`sync` that logs instead of raising (for threads); None when it could not reconcile."""
        try:
            return self.sync(reason)
        except SwapRefused as exc:
            log.warning("reconcile (%s): %s", reason, exc)
        except Exception as exc:
            self._scorer.metrics.reconciles.labels(outcome="failed").inc()
            log.warning("reconcile (%s) failed, will retry in %.0fs: %s", reason, self.interval_s, exc)
        return None


# --- listening -----------------------------------------------------------------------------------
class _Assigned(ConsumerRebalanceListener):
    """Runs inside kafka-python's poll: only flips events. `assigned` is set by the listener's loop once the
    new partitions' positions are fixed (see `ControlListener._fix_positions`)."""

    def __init__(self, pending: threading.Event, assigned: threading.Event) -> None:
        self._pending, self._assigned = pending, assigned

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._pending.clear()
        self._assigned.clear()

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._pending.set()


def replica_id() -> str:
    """Unique per process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ControlListener:
    """A thread reading the control topic in a consumer group of its own; calls `on_message` per notice.

    Offsets are never committed: a replica only cares about notices from its start on (older state
    comes from the reconcile), so the group leaves nothing behind on the broker.
    """

    def __init__(self, settings: Settings, on_message: Callable[[ControlMessage], None], *,
                 group_id: str | None = None) -> None:
        self._settings = settings
        self._on_message = on_message
        self.group_id = group_id or f"{settings.kafka.group}.control.{replica_id()}"
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._pending = threading.Event()  # partitions assigned, positions not yet fixed
        self._thread: threading.Thread | None = None
        self.heartbeat = Heartbeat("control")  # beats every poll and every connect attempt

    def start(self) -> None:
        self._thread = threading.Thread(target=self.heartbeat.guard(self._run), name="ranktune-control",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def state(self) -> str:
        """`listening` once partitions are assigned, `connecting` before, `stopped` after `stop()`."""
        if self._stop.is_set():
            return "stopped"
        return "listening" if self._assigned.is_set() else "connecting"

    def wait_assigned(self, timeout_s: float) -> bool:
        """True once the group has given this listener the topic's partitions and their positions are fixed:
        every notice produced from then on is read."""
        return self._assigned.wait(timeout_s)

    def _fix_positions(self, consumer: KafkaConsumer) -> None:
        """Resolve the `latest` position of every assigned partition now. kafka-python looks it up lazily, at
        the first fetch of each partition, so a notice produced between the assignment and that lookup was
        skipped (seen in the poison-pill test: the notice behind the pills never arrived)."""
        if not self._pending.is_set() or self._assigned.is_set():
            return
        for tp in consumer.assignment():
            consumer.position(tp)
        self._pending.clear()
        self._assigned.set()

    def _run(self) -> None:
        s = self._settings
        delay = 0.5
        while not self._stop.is_set():
            self.heartbeat.beat()
            try:
                ensure_topics(s, [s.kafka.control_topic])
                consumer = KafkaConsumer(
                    **client_kwargs(s, client_id=f"ranktune-control-{self.group_id[-6:]}"),
                    group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="latest",
                    session_timeout_ms=s.kafka.session_timeout_ms, heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
                    fetch_max_wait_ms=100,
                )
            except (BrokerUnavailable, KafkaError) as exc:
                log.warning("control listener cannot connect (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            try:
                consumer.subscribe([s.kafka.control_topic], listener=_Assigned(self._pending, self._assigned))
                log.info("control listener on %s, group %s", s.kafka.control_topic, self.group_id)
                while not self._stop.is_set():
                    self.heartbeat.beat()
                    for records in consumer.poll(timeout_ms=s.kafka.poll_timeout_ms).values():
                        for rec in records:
                            self._handle(rec.topic, rec.partition, rec.offset, rec.value)
                    self._fix_positions(consumer)
            except KafkaError as exc:
                log.warning("control listener error (%s); reconnecting", exc)
            finally:
                self._assigned.clear()
                self._pending.clear()
                try:
                    consumer.close(autocommit=False)
                except Exception:
                    log.debug("closing the control consumer failed", exc_info=True)

    def _handle(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        """Act on one notice; a malformed one is logged and skipped, and nothing in it ends the listener."""
        where = f"{topic}[{partition}]@{offset}"
        try:
            message = ControlMessage.from_bytes(value)
        except ValueError as exc:
            log.warning("ignoring malformed control message %s: %s", where, exc)
            return
        except Exception as exc:  # whatever else a hostile message can raise: the listener must go on
            log.warning("ignoring malformed control message %s: %s: %s", where, type(exc).__name__, exc)
            return
        log.info("control %s: %s %s (from %s)", where, message.action, message.version, message.from_version)
        try:
            self._on_message(message)
        except Exception:
            log.exception("handling control message %s failed", where)
