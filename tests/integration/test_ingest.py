"""Ingestion against a real tansu broker: `ranktune ingest` as a subprocess, and the `Ingestor` in-process
for the outage tests (broker stopped and restarted, database refusing connections)."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import TopicPartition
from sqlalchemy import text

from daemon.ingest.consumer import Ingestor
from daemon.ingest.deadletter import redact_personal
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.writer import bound_sqlite_wait
from storage.db import ensure_schema, make_engine
from tests.fixtures.db import _pg_admin
from tests.fixtures.ingest import DEFECT_REASONS, IngestCase, simulate, valid_ids, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.broker]


def _produce_in_background(case: IngestCase, records: list, events_per_s: float) -> threading.Thread:
    t = threading.Thread(target=case.produce, args=(records,), kwargs={"events_per_s": events_per_s}, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(150)
def test_ingest_stores_valid_events_dead_letters_bad_ones_and_stops_on_sigterm(broker, engine, db_url, ingest_case):
    case = ingest_case(broker.bootstrap, db_url)
    records = simulate(1500, malformed_rate=0.05, seed=11)
    bad = [r for r in records if r.kind == "malformed"]
    assert len(bad) > 30 and {r.defect for r in bad} == set(DEFECT_REASONS)
    case.create_topics()
    case.produce(records)
    proc = case.start()

    expected = valid_ids(records)
    wait_until(lambda: case.count() >= len(expected), 60, "every valid event stored")
    assert case.stored_ids() == expected

    # personal ids are stored only as keyed hashes
    rows = case.query("select user_hash, session_hash from feedback_events")
    assert rows and all(len(u) == 64 and len(s) == 64 for u, s in rows)
    assert not any(u.startswith("u-") or s.startswith("s-") for u, s in rows)
    catalog = {r.payload["item_id"] for r in records if r.kind == "catalog" and r.payload}
    assert {r[0] for r in case.query("select item_id from catalog_items")} == catalog

    # every malformed record is dead-lettered exactly once, with its original bytes (personal ids replaced by
    # the pseudonyms storage keeps), key and reason
    dead = case.topic_records(case.settings.kafka.deadletter_topic, len(bad))
    assert len(dead) == len(bad)
    pseudonymize = Pseudonymizer(case.settings.ingest.pseudonym_key)
    wanted: dict[tuple[bytes, bytes | None], list] = defaultdict(list)
    for r in bad:
        wanted[redact_personal(r.value, pseudonymize)[0], r.key].append(r)
    for d in dead:
        headers = {k: v.decode() for k, v in d.headers}
        assert headers["source_topic"] == case.settings.kafka.feedback_topic
        assert int(headers["source_offset"]) >= 0 and int(headers["source_partition"]) >= 0
        assert headers["ts"] and headers["message"]
        original = wanted[d.value, d.key].pop()  # IndexError: a dead letter that was never produced
        assert headers["reason"].startswith(DEFECT_REASONS[original.defect]), (original.defect, headers)
    assert not any(wanted.values())
    users = {r.payload["user_id"] for r in records if r.kind == "feedback" and r.payload}
    assert not any(f'"{u}"'.encode() in d.value for d in dead for u in users)  # raw user ids never reach the topic
    assert sum(b"user_id" in dict(d.headers).get("redacted", b"") for d in dead) > len(bad) // 2

    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.log()[-3000:]
    assert "ingest stopped: consumed=" in proc.log()
    assert case.committed() == case.next_offsets()  # everything consumed is committed
    assert not any(u in proc.log() for u in users)  # raw user ids are never logged


@pytest.mark.timeout(150)
def test_sigkill_mid_stream_then_restart_stores_every_event_exactly_once(broker, tmp_path, ingest_case):
    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'crash.db'}")
    records = simulate(6000, seed=12)
    expected = valid_ids(records)
    case.create_topics()
    first = case.start()
    first.wait_assigned()
    producer = _produce_in_background(case, records, events_per_s=1500)

    wait_until(lambda: case.count() >= 1500, 60, "a part of the stream stored")
    first.kill()  # SIGKILL: no final commit, no clean leave
    at_kill = case.count()
    assert at_kill < len(expected), "the kill came after the stream ended: nothing was tested"

    second = case.start()
    producer.join(timeout=60)
    wait_until(lambda: case.count() >= len(expected), 90, "every valid event stored after the restart")
    assert case.stored_ids() == expected
    assert case.count() == len(expected)  # exactly once: re-delivered records were absorbed
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


@pytest.mark.timeout(150)
def test_sigterm_mid_stream_exits_0_with_only_stored_events_committed(broker, tmp_path, ingest_case):
    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'term.db'}")
    records = simulate(6000, seed=13)
    expected = valid_ids(records)
    case.create_topics()
    first = case.start()
    first.wait_assigned()
    producer = _produce_in_background(case, records, events_per_s=1500)

    wait_until(lambda: case.count() >= 1500, 60, "a part of the stream stored")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, first.log()[-3000:]
    committed = case.committed()
    stored = case.stored_ids()
    assert committed and len(stored) < len(expected)

    # never committed ahead of the database: every record below a committed offset is stored
    producer.join(timeout=60)
    feedback = case.topic_records(case.settings.kafka.feedback_topic, len(expected))
    below = [r for r in feedback if r.offset < committed.get(TopicPartition(r.topic, r.partition), 0)]
    assert below
    assert {json.loads(r.value)["event_id"] for r in below} <= stored

    # and nothing is lost: a restart continues from the commits
    second = case.start()
    wait_until(lambda: case.count() >= len(expected), 90, "every valid event stored after the restart")
    assert case.stored_ids() == expected
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert case.committed() == case.next_offsets()


@contextmanager
def _ingestor(case: IngestCase, engine) -> Iterator[Ingestor]:
    ing = Ingestor(case.settings, engine)
    thread = threading.Thread(target=ing.run, name="test-ingestor", daemon=True)
    thread.start()
    try:
        yield ing
    finally:
        ing.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the ingest loop did not stop"


@pytest.mark.timeout(150)
def test_broker_restart_on_the_same_port_is_survived_without_a_restart(broker_factory, tmp_path, ingest_case):
    b = broker_factory()
    case = ingest_case(b.bootstrap, f"sqlite:///{tmp_path / 'outage.db'}")
    engine = make_engine(case.settings.storage.sqlalchemy_url)
    ensure_schema(engine)
    before, after = simulate(400, seed=21), simulate(400, seed=22)
    case.create_topics()
    case.produce(before)
    with _ingestor(case, engine) as ing:
        wait_until(lambda: case.stored_ids() >= valid_ids(before), 60, "events before the outage stored")
        b.stop()
        threading.Event().wait(3)  # the loop keeps running against a dead broker
        assert ing.healthy()
        b.start()  # same port, empty: tansu keeps nothing
        case.create_topics()
        case.produce(after)
        wait_until(lambda: case.stored_ids() >= valid_ids(before) | valid_ids(after), 90,
                   "events produced after the restart stored")
        assert ing.healthy()
    engine.dispose()


@contextmanager
def _database_down(db_url: str) -> Iterator[None]:
    """SQLite: another connection holds the write lock. PostgreSQL: the database refuses connections."""
    if db_url.startswith("sqlite"):
        lock = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    name = db_url.rsplit("/", 1)[1]
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
    try:
        yield
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.mark.timeout(150)
def test_database_outage_pauses_without_committing_and_loses_nothing(broker, engine, db_url, ingest_case, caplog):
    caplog.set_level(logging.INFO, logger="daemon.ingest.consumer")
    # a short max_poll_interval: the outage outlasts it, so the member must keep polling to stay
    case = ingest_case(broker.bootstrap, db_url, kafka_max_poll_interval_ms=5000)
    bound_sqlite_wait(engine, 1.0)
    before, during = simulate(300, seed=31), simulate(300, seed=32)
    case.create_topics()
    case.produce(before)
    with _ingestor(case, engine) as ing:
        wait_until(lambda: case.stored_ids() >= valid_ids(before), 60, "events before the outage stored")
        committed = wait_until(lambda: (c := case.committed()) == case.next_offsets() and c, 20, "commits")
        caplog.clear()
        with _database_down(db_url):
            case.produce(during)
            wait_until(lambda: ing.stats.snapshot()["paused"], 30, "partitions paused")
            threading.Event().wait(6)  # longer than max_poll_interval
            assert case.committed() == committed  # nothing committed while the database is down
            assert ing.stats.snapshot()["db_errors"] >= 1
            assert ing.healthy()
        wait_until(lambda: case.stored_ids() >= valid_ids(before) | valid_ids(during), 60,
                   "events held during the outage stored")
        wait_until(lambda: case.committed() == case.next_offsets(), 20, "commits after the outage")
        assert not ing.stats.snapshot()["paused"]
        messages = [r.getMessage() for r in caplog.records]
    assert case.stored_ids() == valid_ids(before) | valid_ids(during)
    assert any("partitions paused" in m for m in messages)
    assert any("partitions resumed" in m for m in messages)
    assert not any("partitions revoked" in m for m in messages), messages  # the member stayed in the group



@pytest.mark.timeout(120)
def test_an_oversized_key_is_cut_so_its_dead_letter_fits_the_request_limit(broker, tmp_path, ingest_case):
    """A source record whose key and value together pass the 1 MiB request limit (a compressed batch, or a
    topic with a bigger limit, lets one in) is still dead-lettered: before, its key was sent whole, the
    broker refused the send for good, and ingest stopped on that record at every restart."""
    from daemon.ingest.deadletter import DeadLetterPublisher
    from daemon.ingest.events import Rejection

    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'key.db'}")
    case.create_topics()
    publisher = DeadLetterPublisher(case.settings)
    try:
        retry, dropped = publisher.publish(
            [Rejection("fb", 0, 7, b"k" * 1_200_000, b"x" * 1_100_000, "not_json", "m" * 5000)])
    finally:
        publisher.close()
    assert retry == [] and dropped == []
    [rec] = case.topic_records(case.settings.kafka.deadletter_topic, 1)
    headers = dict(rec.headers)
    assert headers["key_truncated"] == b"1200000" and headers["truncated"] == b"1100000"
    assert rec.key == b"k" * 8192 and headers["message"] == b"m" * 1024
    assert headers["reason"] == b"not_json" and headers["source_offset"] == b"7"


def test_a_dead_letter_refused_for_good_stops_ingest_without_committing(broker, tmp_path, ingest_case, monkeypatch):
    """#14: a non-retriable dead-letter error must not let the batch commit (the record would be lost)."""
    from kafka.errors import TopicAuthorizationFailedError

    from daemon.errors import DeadLetterFailed
    from daemon.ingest.deadletter import DeadLetterPublisher
    from daemon.ingest.events import Rejection

    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'dl.db'}")
    engine = make_engine(case.settings.storage.sqlalchemy_url)
    ensure_schema(engine)
    records = simulate(200, seed=41)
    case.create_topics()
    case.produce(records)

    refuse = threading.Event()
    real_submit = DeadLetterPublisher.submit

    def submit(self: DeadLetterPublisher, rejects: list[Rejection]) -> list:
        if refuse.is_set():  # what the broker answers for a topic this client may not write
            return [(r, TopicAuthorizationFailedError()) for r in rejects]
        return real_submit(self, rejects)

    monkeypatch.setattr(DeadLetterPublisher, "submit", submit)
    ing = Ingestor(case.settings, engine)
    thread = threading.Thread(target=ing.heartbeat.guard(ing.run), daemon=True)
    thread.start()
    try:
        wait_until(lambda: case.stored_ids() >= valid_ids(records), 60, "the first events stored")
        committed = wait_until(lambda: (c := case.committed()) == case.next_offsets() and c, 20, "commits")
        refuse.set()
        poison = simulate(50, seed=42, malformed_rate=0.2)
        case.produce(poison)
        thread.join(60)
        assert not thread.is_alive(), "the loop went on after a dead letter was refused for good"
        status = ing.heartbeat.status(0.0)
        assert status.state == "dead" and DeadLetterFailed.__name__ in (status.reason or ""), status
        assert case.committed() == committed  # nothing committed past the refused record
    finally:
        ing.stop()
        thread.join(10)
    refuse.clear()
    # after the restart, with the dead-letter topic writable again, the poison is dead-lettered and committed
    with _ingestor(case, engine):
        wait_until(lambda: case.committed() == case.next_offsets(), 60, "commits after the restart")
    assert case.stored_ids() == valid_ids(records) | valid_ids(poison)
    bad = [r for r in poison if r.kind == "malformed"]
    assert len(case.topic_records(case.settings.kafka.deadletter_topic, len(bad))) >= len(bad)
