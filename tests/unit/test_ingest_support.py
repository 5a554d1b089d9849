"""The ingestion helpers that need no broker: Kafka options, counters, signal handling, dead letters."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from daemon.cli import main
from daemon.ingest.consumer import Backoff, Ingestor
from daemon.ingest.deadletter import headers_for
from daemon.ingest.events import ParseConfig, Parsed, Rejection, parse_record
from daemon.ingest.kafka_client import client_kwargs, redacted
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.stats import IngestStats
from daemon.ingest.writer import write_batch
from daemon.lifecycle import install_signal_handlers
from daemon.settings import Settings
from storage.db import make_engine

CFG = ParseConfig(feedback_topic="fb", catalog_topic="cat", max_message_bytes=65536)


def test_plaintext_client_kwargs():
    kw = client_kwargs(Settings(kafka_bootstrap="a:9092, b:9093"), client_id="x")
    assert kw == {"bootstrap_servers": ["a:9092", "b:9093"], "security_protocol": "PLAINTEXT", "client_id": "x"}


def test_sasl_ssl_scram_passes_through_and_is_never_shown(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="ingest", kafka_sasl_password="s3cret-pw", kafka_ssl_cafile=ca)
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "ingest" and kw["sasl_plain_password"] == "s3cret-pw"
    assert kw["ssl_cafile"] == str(ca)
    # every key is an option all three kafka-python clients know
    for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(kw) <= set(cls.DEFAULT_CONFIG), cls
    assert "s3cret-pw" not in repr(redacted(kw)) and redacted(kw)["sasl_plain_password"] == "***"
    assert "s3cret-pw" not in repr(s.redacted())


def test_stats_snapshot_and_concurrent_adds():
    stats = IngestStats()

    def work() -> None:
        for _ in range(1000):
            stats.add(consumed=2, stored=1, duplicates=1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.set(lag=5, paused=True)
    stats.committed()
    snap = stats.snapshot()
    assert snap["consumed"] == 8000 and snap["stored"] + snap["duplicates"] == 8000
    assert snap["lag"] == 5 and snap["paused"] is True and snap["commits"] == 1 and snap["last_commit_at"]
    assert "_lock" not in snap
    assert "consumed=8000" in stats.summary()


def test_backoff_grows_to_its_cap_and_resets():
    b = Backoff(0.1, 0.5)
    delays = [b.next() for _ in range(6)]
    assert delays[0] < 0.13 and all(d <= 0.6 for d in delays) and delays[-1] > 0.39
    b.reset()
    assert b.next() < 0.13


def test_ingestor_constructor_connects_to_nothing(tmp_path: Path):
    s = Settings(kafka_bootstrap="127.0.0.1:1", storage_database_url=f"sqlite:///{tmp_path / 'x.db'}")
    engine = make_engine(s.storage.sqlalchemy_url)
    ing = Ingestor(s, engine)  # no broker there, and no error
    assert not ing.healthy()
    ing.stop()
    t0 = time.monotonic()
    ing.run()  # stopped before it started: returns without connecting
    assert time.monotonic() - t0 < 1.0
    assert not (tmp_path / "x.db").exists()


def test_a_row_the_database_refuses_comes_back_as_store_failed_and_the_rest_is_stored(engine):
    value = b'{"event_id": "e-%d", "ts": "2026-11-01T12:00:00Z", "query": "q", "item_id": "i", "action": "click"}'
    batch: list[Parsed] = []
    for i in range(5):
        p = parse_record("fb", 0, i, None, value % i, config=CFG, pseudonymize=Pseudonymizer(None))
        assert isinstance(p, Parsed)
        batch.append(p if i != 2 else p._replace(row=p.row | {"query": None}))  # NOT NULL: slipped past the schema
    out = write_batch(engine, batch)
    assert (out.stored, out.duplicates) == (4, 0)
    assert [(r.offset, r.reason) for r in out.refused] == [(2, "store_failed")]
    again = write_batch(engine, batch)
    assert (again.stored, again.duplicates, len(again.refused)) == (0, 4, 1)


def test_bad_rows_in_a_big_batch_are_found_by_halving_not_one_transaction_per_event(engine, monkeypatch):
    import daemon.ingest.writer as writer

    value = b'{"event_id": "h-%d", "ts": "2026-11-01T12:00:00Z", "query": "q", "item_id": "i", "action": "click"}'
    batch: list[Parsed] = []
    for i in range(1000):
        p = parse_record("fb", 0, i, None, value % i, config=CFG, pseudonymize=Pseudonymizer(None))
        assert isinstance(p, Parsed)
        batch.append(p if i not in (17, 600) else p._replace(row=p.row | {"query": None}))
    calls: list[int] = []
    real = writer._store
    monkeypatch.setattr(writer, "_store", lambda e, rows: calls.append(len(rows)) or real(e, rows))
    out = write_batch(engine, batch)
    assert (out.stored, out.duplicates) == (998, 0)
    assert [(r.offset, r.reason) for r in out.refused] == [(17, "store_failed"), (600, "store_failed")]
    assert len(calls) <= 1 + 2 * 2 * 7 + 2 * 8, calls  # 2 bad rows: 7 halvings to 8 rows, then one by one
    calls.clear()  # a batch of bad rows only: about 1.25 transactions per row (halving all the way took 2)
    all_bad = [p._replace(row=p.row | {"query": None, "event_id": f"b-{p.offset}"}) for p in batch[:64]]
    out = write_batch(engine, all_bad)
    assert out.stored == 0 and len(out.refused) == 64 and len(calls) <= 1 + 14 + 64, len(calls)


def test_dead_letter_headers_name_the_source_and_reason():
    rej = Rejection("fb", 1, 42, b"k", b"{bad", "not_json", "expected value")
    headers = dict(headers_for(rej))
    assert headers["source_topic"] == b"fb" and headers["source_partition"] == b"1"
    assert headers["source_offset"] == b"42" and headers["reason"] == b"not_json"
    assert headers["message"] == b"expected value" and headers["ts"].startswith(b"20")
    assert dict(headers_for(rej, truncated_from=9)).get("truncated") == b"9"


def test_sigterm_and_first_sigint_only_ask_to_stop():
    calls: list[str] = []
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    restore = install_signal_handlers(lambda: calls.append("stop"))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert calls == ["stop"]
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert calls == ["stop", "stop"]
        # a second Ctrl-C really interrupts
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous


def test_signal_handlers_only_from_the_main_thread():
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            install_signal_handlers(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=attempt)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


def test_ingest_stops_at_start_up_on_an_outdated_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as c:
        c.execute("create table other (x int)")
    monkeypatch.setenv("RANKTUNE_STORAGE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("RANKTUNE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert main(["ingest"]) == 1
    assert "ranktune db upgrade" in capsys.readouterr().err
