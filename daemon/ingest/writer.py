"""Writes a batch of parsed events to the database in one transaction (the ingest loop's storage step).

Rows go through `storage.events_repo` (idempotent: a feedback `event_id` already stored is a
duplicate, an older catalog `ts` never replaces a newer one). A batch the database refuses for a
data reason (`DataError`, `IntegrityError`: a row slipped past the schema) is written again in
halves, each half that the database refuses halved again down to a few events, written one at a time,
and the refused events come back as `store_failed` rejections for the dead-letter topic, so one bad row
never blocks the partition: k bad rows in a batch of n cost about 2·k·log2(n/8) + 8·k transactions, not n
(a batch of bad rows only, about 1.25 n; one at a time took about 100 s for 5,000 rows over a 2 ms link,
past `max_poll_interval_ms`). Any other database error is left to the caller: the database is down, and
the whole batch is retried later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from daemon.ingest.events import Parsed, Rejection
from daemon.settings_groups import EngineOptions
from storage.db import make_engine, sqlite_pragmas, write_scope
from storage.errors import StorageError
from storage.events_repo import insert_feedback, upsert_catalog, write_time

log = logging.getLogger(__name__)

ONE_BY_ONE = 8  # a refused part of at most this many events is written one event at a time
CHUNK_ROWS = 1000  # catalog rows per statement (PostgreSQL allows 65535 parameters in one)

# errors that mean "the database is unavailable now": hold the batch and retry it
DB_UNAVAILABLE: tuple[type[Exception], ...] = (SQLAlchemyError, StorageError)


@dataclass
class WriteOutcome:
    stored: int = 0
    duplicates: int = 0
    refused: list[Rejection] = field(default_factory=list)


def make_ingest_engine(url: str, options: EngineOptions, max_poll_interval_ms: int) -> Engine:
    """The ingest loop's own engine, on which one wait for the database lasts at most a quarter of
    `max_poll_interval_ms`: SQLite's lock wait (and at most 5 s, `bound_sqlite_wait`), PostgreSQL's
    statement timeout (the configured one when shorter). A stuck database then fails the write, which holds
    the batch and pauses the partitions, instead of keeping the loop from polling until the group drops the
    member (the general statement timeout, 120 s by default, is twice the default poll interval)."""
    bound_ms = max(1, max_poll_interval_ms // 4)
    configured = options["statement_timeout_ms"]
    engine = make_engine(url, connect_timeout_s=options["connect_timeout_s"],
                         statement_timeout_ms=min(configured, bound_ms) if configured else bound_ms)
    bound_sqlite_wait(engine, min(5.0, bound_ms / 1000))
    tune_sqlite_ingest(engine)
    return engine


SQLITE_WAL_AUTOCHECKPOINT_PAGES = 10_000  # ingest connections: about 40 MB of WAL between checkpoints (SQLite: 1,000)
SQLITE_CACHE_KIB = 65_536  # ingest connections' page cache, 64 MiB (SQLite: 2 MiB)


def tune_sqlite_ingest(engine: Engine, *, checkpoint_pages: int = SQLITE_WAL_AUTOCHECKPOINT_PAGES,
                       cache_kib: int = SQLITE_CACHE_KIB) -> None:
    """Two SQLite settings of this engine's connections, for a writer of large batches:

    - `PRAGMA wal_autocheckpoint`: a commit copies the WAL into the database file once it holds
      `checkpoint_pages` pages, not SQLite's 1,000 (about 4 MB). Each checkpoint writes back every page
      changed since the last one and syncs the file; at the default, ingest checkpointed every few batches
      and wrote the same hot pages (the last pages of the table and of the `ingested_at` index, the inner
      pages of the `event_id` index) back again each time.
    - `PRAGMA cache_size`: `cache_kib` of page cache instead of 2 MiB. Producers that send random ids
      (UUIDs) insert each row at a random leaf of the `event_id` index; once the index outgrows the cache,
      most inserts read their leaf back from the OS.

    Measured in README "Benchmarks" (ingestion, stop 28). Only this engine's connections change: the others
    keep SQLite's defaults, and any connection's checkpoint covers the whole WAL."""
    if engine.dialect.name == "sqlite":
        sqlite_pragmas(engine, {"wal_autocheckpoint": int(checkpoint_pages), "cache_size": -int(cache_kib)})


def bound_sqlite_wait(engine: Engine, seconds: float) -> None:
    """Make SQLite give up on a lock after `seconds` (`make_engine` waits 30 s), so a locked database
    holds the batch and pauses the partitions instead of stalling the loop past `max_poll_interval`.

    Set on every checkout, so connections already pooled get it too (one PRAGMA per batch)."""
    if engine.dialect.name == "sqlite":
        sqlite_pragmas(engine, {"busy_timeout": int(seconds * 1000)}, on="checkout")


def write_batch(engine: Engine, parsed: list[Parsed]) -> WriteOutcome:
    """Store `parsed` in one transaction. Raises one of `DB_UNAVAILABLE` when the database is down."""
    try:
        return _store(engine, parsed)
    except (DataError, IntegrityError) as exc:
        log.error("database refused a batch (%s); storing its %d events in halves", short_error(exc), len(parsed))
    out = WriteOutcome()
    mid = len(parsed) // 2
    for half in (parsed[:mid], parsed[mid:]):
        _store_halving(engine, half, out)
    return out


def _store_halving(engine: Engine, parsed: list[Parsed], out: WriteOutcome) -> None:
    """Store `parsed` in one transaction; when the database refuses it for a data reason, each half in
    its own, and a refused part of at most `ONE_BY_ONE` events one event at a time (so a batch of bad rows
    only costs about 1.25 transactions per event, not 2); refused events become `store_failed`."""
    if not parsed:
        return
    try:
        done = _store(engine, parsed)
    except (DataError, IntegrityError) as exc:
        if len(parsed) == 1:
            p = parsed[0]
            log.error("%s refused by the database: %s", p.where, short_error(exc))
            out.refused.append(Rejection(p.topic, p.partition, p.offset, p.key, p.value, "store_failed",
                                         short_error(exc)))
        elif len(parsed) <= ONE_BY_ONE:
            for p in parsed:
                _store_halving(engine, [p], out)
        else:
            mid = len(parsed) // 2
            _store_halving(engine, parsed[:mid], out)
            _store_halving(engine, parsed[mid:], out)
        return
    out.stored += done.stored
    out.duplicates += done.duplicates


def _store(engine: Engine, parsed: list[Parsed]) -> WriteOutcome:
    out = WriteOutcome()
    # the write lock first on SQLite, then the stamp: `ingested_at` must follow commit order (see
    # `storage.events_repo.settled_cutoff`); on PostgreSQL the stamp is the transaction's start
    with write_scope(engine) as session:
        now = write_time(session=session)
        feedback: list[dict[str, Any]] = []
        catalog: list[dict[str, Any]] = []
        for p in parsed:  # the write time goes into the rows themselves (a retry sets it again)
            if p.kind == "feedback":
                p.row["ingested_at"] = now
                feedback.append(p.row)
            else:
                p.row["updated_at"] = now
                catalog.append(p.row)
        if feedback:  # any number of rows in one call (COPY on PostgreSQL, executemany on SQLite)
            res = insert_feedback(session=session, rows=feedback)
            out.stored += res.stored
            out.duplicates += res.duplicates
        for i in range(0, len(catalog), CHUNK_ROWS):
            chunk = catalog[i : i + CHUNK_ROWS]
            written = upsert_catalog(session=session, rows=chunk)
            out.stored += written
            out.duplicates += len(chunk) - written
    return out


def short_error(exc: BaseException) -> str:
    """First line of a (database) error, for log lines and dead-letter headers."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
