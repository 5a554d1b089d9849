"""Writes and reads of feedback events and catalog items. Keyword-only, session passed in."""

from __future__ import annotations

import itertools
import operator
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, cast, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlmodel import Session, col

from storage.models import CatalogItem, FeedbackEvent, as_utc, utcnow
from storage.pg_copy import pg_copy_insert_feedback


@dataclass(frozen=True)
class WriteResult:
    stored: int
    duplicates: int


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# Columns added after the first schema: rows built without them (older producers of rows) store NULL.
_OPTIONAL: dict[str, Any] = {"explore": None, "ranked_position": None}


def insert_feedback(*, session: Session, rows: Sequence[dict[str, Any]]) -> WriteResult:
    """Insert feedback rows; rows whose `event_id` is already stored are skipped (idempotent).

    Any number of rows: on PostgreSQL (psycopg) they are COPYed into a staging table and moved with one
    `INSERT ... SELECT ... ON CONFLICT DO NOTHING` (`storage.pg_copy`); on SQLite they go through the
    driver's `executemany`.

    Every row carries every column of `feedback_events` (as `daemon.ingest.events.parse_record` builds them),
    except the optional exploration marks (`explore`, `ranked_position`), which default to NULL.
    """
    unique = [r if _OPTIONAL.keys() <= r.keys() else {**_OPTIONAL, **r}
              for r in {r["event_id"]: r for r in rows}.values()]
    if not unique:
        return WriteResult(0, len(rows))
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        stored = _sqlite_insert_feedback(conn, unique)
    elif conn.dialect.driver == "psycopg":
        stored = pg_copy_insert_feedback(conn, unique)
    else:
        # Another PostgreSQL driver: one statement, the rows as its parameters (SQLAlchemy's
        # "insertmanyvalues"); RETURNING counts the rows actually inserted (duplicates return nothing).
        stmt = (
            postgresql.insert(FeedbackEvent)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(col(FeedbackEvent.event_id))
        )
        stored = len(conn.execute(stmt, unique).all())
    return WriteResult(stored, len(rows) - stored)


@dataclass(frozen=True)
class _DriverInsert:
    """An `INSERT ... ON CONFLICT DO NOTHING` as driver SQL, with what turns row dicts into its parameters."""

    sql: str
    columns: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's values in statement order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, the column type's bind processor)

    def values_sql(self, rows: int) -> str:
        """The same statement with `rows` parameter groups after VALUES (one statement for many rows)."""
        head, sep, rest = self.sql.partition(" VALUES (")
        group, close, tail = rest.partition(")")
        assert sep and close and set(group) <= set("?, "), self.sql
        return f"{head} VALUES " + ", ".join([f"({group})"] * rows) + tail

    def params(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """One parameter tuple per row, values passed through their bind processors (what SQLAlchemy would
        send). A value that is the very object of the row before (a batch's shared `ingested_at`) is
        processed once."""
        columns, processors = self.columns, self.processors
        if not processors:
            return [columns(r) for r in rows]
        last_in: list[Any] = [_NOTHING] * len(processors)
        last_out: list[Any] = [None] * len(processors)
        out = []
        for r in rows:
            values = list(columns(r))
            for j, (i, process) in enumerate(processors):
                v = values[i]
                if v is not last_in[j]:
                    last_in[j], last_out[j] = v, process(v)
                values[i] = last_out[j]
            out.append(tuple(values))
        return out


_NOTHING = object()
_DRIVER_INSERTS: weakref.WeakKeyDictionary[Dialect, _DriverInsert] = weakref.WeakKeyDictionary()


def _feedback_driver_insert(dialect: Dialect) -> _DriverInsert:
    """The feedback INSERT compiled once per dialect, by SQLAlchemy (quoting, paramstyle, type processing)."""
    cached = _DRIVER_INSERTS.get(dialect)
    if cached is not None:
        return cached
    table = FeedbackEvent.__table__  # type: ignore[attr-defined]  # (sqlmodel does not declare it)
    stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    compiled = stmt.compile(dialect=dialect, column_keys=[c.key for c in table.columns])
    names = tuple(compiled.positiontup or ())
    assert sorted(names) == sorted(c.key for c in table.columns), names
    processors = []
    for i, name in enumerate(names):
        impl = table.c[name].type.dialect_impl(dialect)
        process = impl.bind_processor(dialect)
        if process is not None:
            processors.append((i, _fast_sqlite_datetime(process) if _is_default_sqlite_datetime(impl) else process))
    getter = operator.itemgetter(*names)
    built = _DriverInsert(str(compiled), getter, tuple(processors))
    _DRIVER_INSERTS[dialect] = built
    return built


def _is_default_sqlite_datetime(impl: Any) -> bool:
    return isinstance(impl, sqlite.DATETIME) and impl._storage_format == sqlite.DATETIME._storage_format


def _fast_sqlite_datetime(fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's SQLite DATETIME bind processor (default format "YYYY-MM-DD HH:MM:SS.ffffff", the zone
    dropped) for `datetime` values by `isoformat` in C rather than a %-format of a dict per value: one
    such value per stored event. Anything else goes to SQLAlchemy's own (tests/unit/test_storage.py
    checks that the two agree)."""

    def process(value: Any) -> Any:
        if type(value) is datetime:
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return fallback(value)

    return process


SQLITE_ROWS_PER_STATEMENT = 2000  # at most; fewer when the library allows fewer variables


def _sqlite_insert_feedback(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """SQLite: up to `SQLITE_ROWS_PER_STATEMENT` rows per statement, as one multi-row VALUES list.

    One statement for many rows rather than `executemany` (one statement per row): `sqlite3` releases the
    GIL inside each `sqlite3_step`, and in a writer thread beside the ingest loop (measured at stop 23,
    not kept: no faster, README "Ingestion") a step per row gave the GIL back and waited for it once per
    row; one step per 2,000 rows does not (and is a little faster alone too). The parameters go through the
    column types' bind processors, as SQLAlchemy would send them.

    Counting by `rowcount` is exact: it is `sqlite3_changes()` of the statement, and a row skipped by
    ON CONFLICT DO NOTHING changes nothing.
    """
    insert = _feedback_driver_insert(conn.dialect)
    params = insert.params(rows)
    per = max(1, min(SQLITE_ROWS_PER_STATEMENT, _sqlite_max_variables(conn) // len(params[0])))
    stored = 0
    for i in range(0, len(params), per):
        chunk = params[i : i + per]
        flat = tuple(itertools.chain.from_iterable(chunk))
        stored += int(conn.exec_driver_sql(insert.values_sql(len(chunk)), flat).rowcount)
    return stored


def _sqlite_max_variables(conn: Connection) -> int:
    """`SQLITE_LIMIT_VARIABLE_NUMBER` of this connection (999 before SQLite 3.32, 32766 after, or as built)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection), raw
    return raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def upsert_catalog(*, session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Upsert catalog items; an older `ts` never replaces a newer one. Returns rows written."""
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = latest.get(r["item_id"])
        if cur is None or r["ts"] >= cur["ts"]:
            latest[r["item_id"]] = r
    if not latest:
        return 0
    stmt = _insert(session, CatalogItem)
    cols = ("title", "description", "category", "brand", "attributes", "ts", "updated_at")
    stmt = stmt.on_conflict_do_update(
        index_elements=["item_id"],
        set_={c: stmt.excluded[c] for c in cols},
        where=stmt.excluded.ts >= col(CatalogItem.ts),
    ).returning(col(CatalogItem.item_id))
    return len(session.connection().execute(stmt, list(latest.values())).all())


def count_feedback(*, session: Session, since: datetime | None = None, labelled_only: bool = False) -> int:
    """Events stored after `since` (by ingestion time); `labelled_only` skips bare impressions."""
    q = select(func.count()).select_from(FeedbackEvent)
    if since is not None:
        q = q.where(col(FeedbackEvent.ingested_at) > since)
    if labelled_only:
        q = q.where(col(FeedbackEvent.action) != "impression")
    return int(session.execute(q).scalar_one())


def latest_ingested_at(*, session: Session) -> datetime | None:
    return session.execute(select(func.max(col(FeedbackEvent.ingested_at)))).scalar_one()


# --- the new-data window: `ingested_at` in commit order ------------------------------------------------
# A training records the newest `ingested_at` it read (its `data_cutoff`), and the next one takes the events
# stamped after it as new. That is sound only if no event stamped at or before a cutoff can commit after the
# cutoff was read. One writer at a time (SQLite's write lock, taken before the stamp) gives that by itself.
# Several writers on PostgreSQL (ingest members) do not: a batch stamped earlier can commit later. So there
# each write transaction is stamped with its own start on the server's clock (`transaction_timestamp()`,
# which pg_stat_activity shows as `xact_start`), and a cutoff is held below the start of every transaction
# still open when it is read (`settled_cutoff`). Events between that bound and the newest stamp may then
# count as new for two trainings, never for none.
SETTLE_MARGIN = timedelta(seconds=1)  # below the open transactions' start: the status entry is written at start


def write_time(*, session: Session) -> datetime:
    """The `ingested_at` for the rows the session's transaction writes. PostgreSQL: the transaction's start
    on the server's clock (call it first in the transaction); SQLite: now (call it after taking the write
    lock, `storage.db.write_scope`)."""
    if session.get_bind().dialect.name == "postgresql":
        return as_utc(session.execute(select(func.transaction_timestamp())).scalar_one())
    return utcnow()


def settled_cutoff(*, session: Session) -> datetime | None:
    """The newest `ingested_at` that no event still to commit can be stamped at or before (see above): the
    newest stored stamp, on PostgreSQL held below now and below the start of every other open transaction
    of this database. Sessions of another role are visible only with `pg_read_all_stats` (or as
    superuser); run every ingest member under the daemon's role."""
    if session.get_bind().dialect.name != "postgresql":
        return latest_ingested_at(session=session)
    session.execute(text("SELECT pg_stat_clear_snapshot()"))
    now, oldest = session.execute(text(
        "SELECT clock_timestamp(), min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")).one()
    # the newest stamp is read second: a transaction that commits between the two reads was open at the
    # first (its start is >= `oldest`) or began after it (its start is > `now`); either way it is stamped
    # above the cutoff, so it counts as new next time
    newest = latest_ingested_at(session=session)
    if newest is None:
        return None
    bound = min(now, oldest) if oldest is not None else now
    return min(as_utc(newest), as_utc(bound) - SETTLE_MARGIN)


def recent_feedback(
    *, session: Session, limit: int, until: datetime | None = None, since: datetime | None = None
) -> list[FeedbackEvent]:
    """The newest `limit` events by ingestion time, oldest first."""
    q = select(FeedbackEvent)
    if until is not None:
        q = q.where(col(FeedbackEvent.ingested_at) <= until)
    if since is not None:
        q = q.where(col(FeedbackEvent.ingested_at) > since)
    q = q.order_by(col(FeedbackEvent.ingested_at).desc(), col(FeedbackEvent.event_id).desc()).limit(limit)
    return list(reversed(session.execute(q).scalars().all()))


def oldest_feedback(*, session: Session, limit: int) -> list[FeedbackEvent]:
    """The first `limit` events ever stored (by ingestion time), oldest first."""
    q = select(FeedbackEvent).order_by(col(FeedbackEvent.ingested_at), col(FeedbackEvent.event_id)).limit(limit)
    return list(session.execute(q).scalars().all())


def catalog_items(*, session: Session, item_ids: Sequence[str] | None = None) -> dict[str, CatalogItem]:
    q = select(CatalogItem)
    if item_ids is not None:
        q = q.where(col(CatalogItem.item_id).in_(list(item_ids)))
    return {c.item_id: c for c in session.execute(q).scalars().all()}


def ingest_counts(*, session: Session, since: datetime, until: datetime, bucket_s: int) -> dict[int, int]:
    """Feedback events stored per `bucket_s`-second bucket of ingestion time in [since, until):
    `{bucket start as Unix seconds: events}`, empty buckets left out. Counted by the database (one row per
    bucket comes back, not one per event)."""
    ts = col(FeedbackEvent.ingested_at)
    if session.get_bind().dialect.name == "postgresql":
        bucket: Any = func.floor(func.extract("epoch", ts) / bucket_s) * bucket_s
    else:  # SQLite stores "YYYY-MM-DD HH:MM:SS.ffffff" in UTC, which strftime('%s') reads; integer division
        bucket = cast(func.strftime("%s", ts), Integer) // bucket_s * bucket_s
    bucket = bucket.label("bucket")
    q = (select(bucket, func.count()).where(ts >= since, ts < until).group_by(bucket))
    return {int(b): int(n) for b, n in session.execute(q).all()}
