"""Poison pills on the feedback and catalog topics (a real `ranktune ingest`) and on the control topic
(a real `ControlListener`): every pill is dead-lettered (control: ignored with a log line) and the
stream behind it keeps flowing. """

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaProducer

from daemon.serving.control import ControlListener, ControlMessage
from daemon.settings import Settings
from daemon.tools.broker import EmbeddedBroker
from tests.fixtures.ingest import IngestCase, simulate, valid_ids, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.broker]

Pill = tuple[str, str, bytes | None]  # (topic kind, pill id, value)


def _feedback(ts: str) -> tuple[str, dict[str, Any]]:
    eid = f"pill-{uuid.uuid4().hex[:12]}"
    return eid, {"event_id": eid, "ts": ts, "query": "boots", "item_id": "i1", "action": "click", "position": 1}


def _catalog(ts: str) -> tuple[str, dict[str, Any]]:
    iid = f"pill-{uuid.uuid4().hex[:12]}"
    return iid, {"item_id": iid, "title": "Pill", "ts": ts}


def _ts_pills(*stamps: str) -> list[Pill]:
    out: list[Pill] = []
    for ts in stamps:
        for kind, make in (("feedback", _feedback), ("catalog", _catalog)):
            pid, body = make(ts)
            out.append((kind, pid, json.dumps(body).encode()))
    return out


def _hostile_bytes() -> list[Pill]:
    out: list[Pill] = []
    for kind, make in (("feedback", _feedback), ("catalog", _catalog)):
        pid, body = make("2026-11-01T12:00:00+00:00")
        huge = {**body, "query" if kind == "feedback" else "title": "x" * 300_000}
        out += [
            (kind, f"{pid}-huge", json.dumps(huge).encode()),
            (kind, f"{pid}-deep", b"[" * 30_000 + b"]" * 30_000),
            (kind, f"{pid}-deepobj", b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
            (kind, f"{pid}-utf8", b"\xff\xfe" + json.dumps(body).encode()),
            (kind, f"{pid}-surrogate", json.dumps(body).encode().replace(b'"Pill"', b'"\xed\xa0\x80"')
             .replace(b'"boots"', b'"\xed\xa0\x80"')),
            (kind, f"{pid}-tombstone", None),
        ]
        if kind == "catalog":
            deep = b"[" * 5000 + b"]" * 5000
            out.append((kind, f"{pid}-deepattr", json.dumps({**body, "attributes": {"a": 0}}).encode()
                        .replace(b'{"a": 0}', b'{"a": ' + deep + b"}")))
    return out


PILL_SETS: dict[str, Callable[[], list[Pill]]] = {
    "hostile_bytes": _hostile_bytes,
    "overflow_ts": lambda: _ts_pills("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"),
    "epoch_ts": lambda: _ts_pills("1700000000", "1700000000.5"),
    "far_future_ts": lambda: _ts_pills("2999-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"),
}


def _send(bootstrap: str, pills: list[Pill], topics: dict[str, str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000, acks="all")
    try:
        for kind, pid, value in pills:
            producer.send(topics[kind], key=pid.encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pill_set", [
    "hostile_bytes",
    "overflow_ts",
    "epoch_ts",
    "far_future_ts",
])
def test_poison_pills_are_dead_lettered_and_the_stream_keeps_flowing(
    pill_set: str, broker: EmbeddedBroker, tmp_path: Any, ingest_case: Callable[..., IngestCase],
) -> None:
    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'pills.db'}")
    s = case.settings.kafka
    case.create_topics()
    proc = case.start()
    proc.wait_assigned()
    pills = PILL_SETS[pill_set]()
    _send(case.bootstrap, pills, {"feedback": s.feedback_topic, "catalog": s.catalog_topic})
    behind = simulate(400, seed=61)  # the stream behind the pills
    case.produce(behind)

    expected = valid_ids(behind)
    wait_until(lambda: case.stored_ids() >= expected or proc.proc.poll() is not None, 60, "the stream behind")
    assert proc.proc.poll() is None, proc.log()[-3000:]  # no crash, no crash loop
    dead = case.topic_records(s.deadletter_topic, len(pills), timeout=10)
    by_key: dict[bytes | None, list[Any]] = {}
    for d in dead:
        by_key.setdefault(d.key, []).append(d)
    clamped = _clamped(case) if pill_set == "far_future_ts" else set()
    for kind, pid, value in pills:
        letters = by_key.get(pid.encode(), [])
        if pid in clamped and not letters:
            continue  # a far-future ts may be clamped to the broker's time instead of rejected
        assert len(letters) == 1, (pill_set, kind, pid[-12:], len(letters))  # dead-lettered exactly once
        headers = {k: v.decode() for k, v in letters[0].headers}
        assert letters[0].value == value and headers["reason"] and headers["message"]
        assert headers["source_topic"] == (s.feedback_topic if kind == "feedback" else s.catalog_topic)
    # the stream kept flowing and no pill was stored (unless clamped)
    assert case.stored_ids() - clamped == expected
    assert not {r[0] for r in case.query("select item_id from catalog_items")} & ({p[1] for p in pills} - clamped)
    assert proc.proc.poll() is None


def _clamped(case: IngestCase) -> set[str]:
    """Pill ids stored with a timestamp no later than a day from now."""
    limit = datetime.now(UTC) + timedelta(days=1)
    rows = case.query("select event_id, ts from feedback_events where event_id like 'pill-%' union all "
                      "select item_id, ts from catalog_items where item_id like 'pill-%'")
    out = set()
    for pid, ts in rows:
        when = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
        if when.replace(tzinfo=when.tzinfo or UTC) <= limit:
            out.add(pid)
    return out


CONTROL_PILLS: dict[str, list[bytes | None]] = {
    "malformed": [b"not json", b"\xff\xfe{}", b"[]", b'{"action":"explode","version":"v0001"}',
                  b'{"action":"promote"}', b'{"action":"promote","version":"../../etc"}', b"x" * 200_000],
    "tombstone_and_deep_json": [None, b"[" * 100_000 + b"]" * 100_000],
    "version_lookalikes": [b'{"action":"promote","version":"v0001\\n"}',
                           '{"action":"promote","version":"v\u0661\u0662\u0663\u0664"}'.encode()],
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pills", [
    "malformed",
    "tombstone_and_deep_json",
    "version_lookalikes",
])
def test_control_topic_pills_are_ignored_with_a_log_line_and_notices_keep_flowing(
    pills: str, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.serving.control")
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=broker.bootstrap, kafka_control_topic=f"t-{run}.control",
                        kafka_group=f"g-{run}", kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=1000,
                        kafka_poll_timeout_ms=200)
    got: list[ControlMessage] = []
    listener = ControlListener(settings, got.append)
    listener.start()
    try:
        assert listener.wait_assigned(30), "the control listener never joined"
        values = CONTROL_PILLS[pills]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4_000_000, acks="all")
        for v in values:
            producer.send(settings.kafka.control_topic, key=b"pill", value=v)  # a tombstone needs a key
        good = ControlMessage(action="promote", version="v0042", from_version="v0041")
        producer.send(settings.kafka.control_topic, value=good.to_bytes())
        producer.flush(timeout=30)
        producer.close()
        wait_until(lambda: got, 30, "the notice behind the pills")

        def ignored() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "ignoring" in r.getMessage()]

        # the topic has several partitions: the notice may be read before a pill on another partition
        wait_until(lambda: len(ignored()) >= len(values), 30, "a log line for every pill")
        assert [(m.action, m.version) for m in got] == [("promote", "v0042")]  # no pill reached a scorer
        assert listener.state() == "listening" and listener._thread is not None and listener._thread.is_alive()
        assert len(ignored()) == len(values), [r.getMessage() for r in caplog.records]
    finally:
        listener.stop()
