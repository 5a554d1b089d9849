"""Ingestion throughput: ranktune's end-to-end rate beside kafka-python's raw consume rate.

Produces simulated traffic (`daemon.tools.simulate`) to fresh topics of an embedded tansu broker
(or `--bootstrap`), then consumes the same messages twice, each time with a fresh consumer group:
raw (kafka-python `poll()` only, no processing) and ranktune (`Ingestor`: validate, store in a fresh
SQLite database, dead-letter, commit), and optionally a third time into `--database-url` (a scratch
database at the current schema; the bench rows stay there). Rates are records per second, timed
from the first fetched batch to the last one (raw) or to the last commit (ranktune), so the group
join is not counted. On SQLite ranktune's time also counts one final WAL checkpoint (`final_checkpoint_s`),
so what commits leave in the WAL for a later checkpoint is paid inside the run.

kafka-python checks each record batch's CRC-32C, in pure Python unless the `crc32c` package is
installed; that check is most of the raw rate's cost, so `kafka_crc32c` says which one ran.

Both rates leave out the first batch, the same way: raw from the return of the first `poll()` that
brought records, ranktune from the commit of its first batch, each counting only the records after that
batch. (Until stop 23 the raw rate counted the first batch's records without its time, and ranktune's
window began after its first batch was parsed but before it was written: the ratio was biased by about
one batch in N, against ranktune.)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import random
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from sqlalchemy.engine import Engine

from daemon.ingest.consumer import Ingestor
from daemon.ingest.events import ParseConfig, Parsed, parse_record
from daemon.ingest.kafka_client import client_kwargs, ensure_topics
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.stats import IngestStats
from daemon.ingest.writer import make_ingest_engine, write_batch
from daemon.settings import Settings
from daemon.tools.broker import EmbeddedBroker
from daemon.tools.sim_output import produce_kafka
from daemon.tools.simulate import SimConfig, SimRecord, generate
from storage.db import ensure_schema

TARGET_RATIO = 0.5  # of raw kafka-python with crc32c (a default dependency), on SQLite (issue #16)
TARGET_DB_EVENTS_PER_S = 30000.0  # end to end into PostgreSQL (`--database-url`) on a 2-core machine
TIMEOUT_S = 600.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=20000, help="Feedback events to simulate (default 20000).")
    p.add_argument("--malformed-rate", type=float, default=0.01, help="Share of malformed records (default 0.01).")
    p.add_argument("--items", type=int, default=300, help="Catalog size (default 300).")
    p.add_argument("--seed", type=int, default=7, help="Simulation seed.")
    p.add_argument("--bootstrap", default=None, help="Use this Kafka instead of an embedded tansu broker.")
    p.add_argument("--database-url", default=None,
                   help="Also measure ranktune into this (scratch) database, e.g. PostgreSQL.")
    p.add_argument("--event-ids", choices=("sequential", "uuid"), default="sequential",
                   help="The simulator's event ids (e-SEED-NNNNNNNN, stored in order) or random UUIDs, as many "
                        "producers send them (each lands at a random place of the key index).")
    p.add_argument("--prefill", type=int, default=0,
                   help="Feedback events stored in the SQLite database before the measured run (a table that "
                        "has grown for a while), with the same kind of ids.")


class _TimedStats(IngestStats):
    """Counters that note when the first batch arrived and when all `total` records were committed."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.first_at: float | None = None  # the first batch's commit
        self.first_records = 0  # records of that batch, not counted in the rate
        self.done_at: float | None = None
        self.done = threading.Event()

    def add(self, **deltas: int) -> None:
        super().add(**deltas)
        now = time.perf_counter()
        if deltas.get("batches"):
            s = self.snapshot()
            finished = s["stored"] + s["duplicates"] + s["dead_lettered"] + s["deadletter_failed"]
            if self.first_at is None:
                self.first_at, self.first_records = now, finished
            if finished >= self.total:
                self.done_at = now
                self.done.set()


def _rate(total: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "events_per_s": round(total / seconds, 1) if seconds > 0 else 0.0}


def _after_first(counted: int, seconds: float, first_batch: int) -> dict[str, float]:
    return {**_rate(counted, seconds), "records_timed": counted, "first_batch_records": first_batch}


def _raw(settings: Settings, total: int) -> dict[str, float]:
    gc.collect()  # every measured run starts from the same clean heap (see `_ranktune`)
    consumer = KafkaConsumer(
        settings.kafka.feedback_topic, settings.kafka.catalog_topic,
        **client_kwargs(settings, client_id="ranktune-bench-raw"),
        group_id=f"{settings.kafka.group}-raw", enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        max_poll_records=settings.kafka.poll_max_records,
    )
    try:
        seen, first, first_batch, last = 0, None, 0, 0.0
        deadline = time.monotonic() + TIMEOUT_S
        while seen < total and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=settings.kafka.poll_timeout_ms)
            if batch:
                last = time.perf_counter()
                seen += sum(len(recs) for recs in batch.values())
                if first is None:
                    first, first_batch = last, seen
    finally:
        consumer.close(autocommit=False)
    if seen < total or first is None or seen == first_batch:
        raise TimeoutError(f"raw consumer saw {seen} of {total} records in {TIMEOUT_S:.0f}s, "
                           "or all of them in its first batch (use more --events)")
    return _after_first(seen - first_batch, last - first, first_batch)


def _ranktune(settings: Settings, total: int, label: str) -> dict[str, Any]:
    # A full collection left pending by the set-up (generating and producing the records) costs ~0.1 s
    # and would land in whichever run happens to be going: collect it before each run instead.
    gc.collect()
    engine = make_ingest_engine(settings.storage.sqlalchemy_url, settings.storage.engine_options,
                                settings.kafka.max_poll_interval_ms)
    try:
        ensure_schema(engine)
        stats = _TimedStats(total)
        ingestor = Ingestor(settings.replace(**{"kafka_group": f"{settings.kafka.group}-{label}"}),
                            engine, stats=stats, create_topics=False)
        thread = threading.Thread(target=ingestor.run, name=f"bench-ingest-{label}", daemon=True)
        quiet = logging.getLogger("daemon.ingest.consumer")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # one warning per malformed record would be timed too
        try:
            thread.start()
            finished = stats.done.wait(TIMEOUT_S)
        finally:
            ingestor.stop()
            thread.join(timeout=60)
            quiet.setLevel(level)
        if not finished or stats.first_at is None or stats.done_at is None:
            raise TimeoutError(f"ranktune ({label}) stored {stats.snapshot()} of {total} records in {TIMEOUT_S:.0f}s")
        if stats.first_records >= total:
            raise ValueError(f"ranktune ({label}) stored all {total} records in its first batch: use more --events")
        snap = stats.snapshot()
        checkpoint_s = _final_checkpoint(engine)
        timed = _after_first(total - stats.first_records, stats.done_at - stats.first_at + checkpoint_s,
                             stats.first_records)
        return {**timed, "dialect": engine.dialect.name, "final_checkpoint_s": round(checkpoint_s, 3),
                **{k: snap[k] for k in ("stored", "duplicates", "dead_lettered", "batches")}}
    finally:
        engine.dispose()


def _with_ids(records: list[SimRecord], kind: str, seed: int) -> list[SimRecord]:
    """`records` with each feedback event's `event_id` replaced by a random UUID (drawn from `seed`) when
    `kind` is "uuid"; malformed records stay as they are."""
    if kind == "sequential":
        return records
    rng = random.Random(f"event-ids-{seed}")
    out = []
    for rec in records:
        if rec.stream == "feedback" and rec.kind == "feedback":
            payload = json.loads(rec.value)
            payload["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            rec = dataclasses.replace(rec, value=json.dumps(payload).encode())
        out.append(rec)
    return out


def _prefill(settings: Settings, events: int, kind: str, seed: int) -> None:
    """Store `events` simulated feedback events (another seed's, ids of `kind`) in the settings' database,
    as ingest stores them, in batches of `poll_max_records`; then checkpoint, so the run starts with an empty
    WAL."""
    if events <= 0:
        return
    config = ParseConfig.from_settings(settings)
    records = _with_ids(list(generate(SimConfig(seed=seed + 1, n_events=events))), kind, seed + 1)
    pseudonymize = Pseudonymizer(None)
    rows: list[Parsed] = []
    for offset, rec in enumerate(r for r in records if r.stream == "feedback"):
        parsed = parse_record(config.feedback_topic, 0, offset, rec.key, rec.value, config=config,
                              pseudonymize=pseudonymize)
        if isinstance(parsed, Parsed):
            rows.append(parsed)
    engine = make_ingest_engine(settings.storage.sqlalchemy_url, settings.storage.engine_options,
                                settings.kafka.max_poll_interval_ms)
    try:
        ensure_schema(engine)
        per = settings.kafka.poll_max_records
        for i in range(0, len(rows), per):
            write_batch(engine, rows[i : i + per])
        _final_checkpoint(engine)
    finally:
        engine.dispose()


def _final_checkpoint(engine: Engine) -> float:
    """SQLite: seconds to copy what the run left in the WAL into the database file, which the rate counts
    as part of the run (0.0 on PostgreSQL). How often commits checkpoint is a trade: checkpointing less
    often leaves more for later, and without this a run shorter than one checkpoint interval would not pay
    for any."""
    if engine.dialect.name != "sqlite":
        return 0.0
    with engine.connect() as conn:
        t0 = time.perf_counter()
        busy, _frames, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        seconds = time.perf_counter() - t0
    if busy:
        raise RuntimeError("the final WAL checkpoint could not finish (a connection held the database)")
    return seconds


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ranktune-bench-")))
        bootstrap = args.bootstrap
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker(log_file=tmp / "tansu.log")).bootstrap
        s = settings.replace(**{
            "kafka_bootstrap": bootstrap,
            "kafka_group": f"bench-{run_id}",
            "kafka_feedback_topic": f"bench-{run_id}.feedback",
            "kafka_catalog_topic": f"bench-{run_id}.catalog",
            "kafka_deadletter_topic": f"bench-{run_id}.deadletter",
            # a fresh group joins in ~3 s instead of ~23 s; the rates do not count the join anyway
            "kafka_session_timeout_ms": min(settings.kafka.session_timeout_ms, 6000),
            "kafka_heartbeat_interval_ms": min(settings.kafka.heartbeat_interval_ms, 1000),
        })
        ensure_topics(s, [s.kafka.feedback_topic, s.kafka.catalog_topic, s.kafka.deadletter_topic])
        cfg = SimConfig(seed=args.seed, n_items=args.items, n_events=args.events, malformed_rate=args.malformed_rate)
        records = _with_ids(list(generate(cfg)), args.event_ids, args.seed)
        t0 = time.perf_counter()
        counts = produce_kafka(records, s)
        produce_s = time.perf_counter() - t0
        total = len(records)

        raw = _raw(s, total)
        sqlite_settings = s.replace(**{"storage_database_url": f"sqlite:///{tmp / 'bench.db'}"})
        _prefill(sqlite_settings, args.prefill, args.event_ids, args.seed)
        sqlite = _ranktune(sqlite_settings, total, "sqlite")
        ratio = sqlite["events_per_s"] / raw["events_per_s"] if raw["events_per_s"] else 0.0
        result: dict[str, Any] = {
            "events": total,
            "records": {"feedback": counts["feedback"], "catalog": counts["catalog"], "malformed": counts["malformed"]},
            "broker": "embedded tansu" if args.bootstrap is None else bootstrap,
            "poll_max_records": s.kafka.poll_max_records,
            "event_ids": args.event_ids,
            "sqlite_prefilled_events": args.prefill,
            "kafka_crc32c": "crc32c package (C)" if importlib.util.find_spec("crc32c") else "pure Python",
            "produce": _rate(total, produce_s),
            "raw": raw,
            "ranktune": sqlite,
            "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO,
        }
        if args.database_url:
            db = s.replace(**{"storage_database_url": args.database_url})
            measured = _ranktune(db, total, "db")
            result["ranktune_database_url"] = {**measured, "target_events_per_s": TARGET_DB_EVENTS_PER_S,
                                               "meets_target": measured["events_per_s"] >= TARGET_DB_EVENTS_PER_S}
        return result
