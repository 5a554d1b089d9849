"""Bulk feedback writes (binary COPY on PostgreSQL, executemany on SQLite): exactly once, counted right,
refusals still raised as SQLAlchemy errors, every write inside the caller's transaction."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from sqlmodel import Session, col

from daemon.ingest.events import ParseConfig, Parsed, parse_record
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.writer import write_batch
from storage import events_repo
from storage.db import make_engine, session_scope, upgrade
from storage.models import FeedbackEvent, as_utc, utcnow
from tests.fixtures.ingest import wait_until
from tests.unit.test_storage import feedback

CFG = ParseConfig(feedback_topic="fb", catalog_topic="cat", max_message_bytes=65536)


def _stored(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as c:
        rows = c.execute(text("select event_id, \"offset\" from feedback_events order by event_id")).all()
    return [(str(e), int(o)) for e, o in rows]


def test_chunks_with_duplicates_in_one_transaction_store_each_event_once(engine: Engine) -> None:
    with session_scope(engine) as s:
        a = events_repo.insert_feedback(session=s, rows=[feedback(i) for i in range(0, 30)])
        b = events_repo.insert_feedback(session=s, rows=[feedback(i) for i in range(20, 50)])  # 10 already in
        c = events_repo.insert_feedback(session=s, rows=[feedback(i) for i in range(50, 60)])  # none
        d = events_repo.insert_feedback(session=s, rows=[feedback(i) for i in range(55, 65)])  # 5 already in
    assert [(r.stored, r.duplicates) for r in (a, b, c, d)] == [(30, 0), (20, 10), (10, 0), (5, 5)]
    assert [e for e, _ in _stored(engine)] == sorted(f"e{i}" for i in range(65))


def test_a_rolled_back_transaction_leaves_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        events_repo.insert_feedback(session=s, rows=[feedback(i) for i in range(10)])
        raise RuntimeError("after the write, before the commit")
    assert _stored(engine) == []
    with session_scope(engine) as s:  # a staging table left by the failed transaction would count them twice
        assert events_repo.insert_feedback(session=s, rows=[feedback(i) for i in range(10)]).stored == 10


def test_a_value_over_the_column_length_is_a_data_error(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce varchar lengths")
    with pytest.raises(DataError), session_scope(engine) as s:
        events_repo.insert_feedback(session=s, rows=[feedback(0), feedback(1, request_id="r" * 129)])
    assert _stored(engine) == []


def test_the_writer_dead_letters_only_the_refused_row_of_a_copied_batch(engine: Engine) -> None:
    value = b'{"event_id": "e-%d", "ts": "2026-11-01T12:00:00Z", "query": "q", "item_id": "i", "action": "click"}'
    batch: list[Parsed] = []
    for i in range(50):
        p = parse_record("fb", 0, i, None, value % i, config=CFG, pseudonymize=Pseudonymizer(None))
        assert isinstance(p, Parsed)
        batch.append(p if i != 7 else p._replace(row=p.row | {"action": "x" * 17}))  # varchar(16)
    out = write_batch(engine, batch)
    if engine.dialect.name == "postgresql":
        assert (out.stored, out.duplicates, [r.offset for r in out.refused]) == (49, 0, [7])
    else:
        assert (out.stored, out.duplicates, out.refused) == (50, 0, [])
    again = write_batch(engine, batch)
    assert again.stored == 0 and again.duplicates == 49 + (engine.dialect.name != "postgresql")


@pytest.mark.postgres
def test_two_members_writing_overlapping_batches_at_once_store_each_event_once(db_url: str, engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL")
    other = make_engine(db_url)
    results: list[events_repo.WriteResult] = []
    start = threading.Barrier(2)

    def member(eng: Engine, lo: int) -> None:
        start.wait()
        for k in range(5):
            with session_scope(eng) as s:
                rows = [feedback(i) for i in range(lo + 40 * k, lo + 40 * k + 60)]
                results.append(events_repo.insert_feedback(session=s, rows=rows))

    threads = [threading.Thread(target=member, args=(e, lo)) for e, lo in ((engine, 0), (other, 20))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.dispose()
    stored = _stored(engine)
    assert len(stored) == len({e for e, _ in stored}) == 240
    assert sum(r.stored for r in results) == 240


def _batch(lo: int, n: int) -> list[Parsed]:
    value = b'{"event_id": "e%d", "ts": "2026-11-01T12:00:00Z", "query": "q", "item_id": "i", "action": "click"}'
    out = []
    for i in range(lo, lo + n):
        p = parse_record("fb", 0, i, None, value % i, config=CFG, pseudonymize=Pseudonymizer(None))
        assert isinstance(p, Parsed)
        out.append(p)
    return out


def _ingested_at(engine: Engine, ids: list[str]) -> list[datetime]:
    with session_scope(engine) as s:
        rows = s.execute(select(FeedbackEvent.ingested_at).where(col(FeedbackEvent.event_id).in_(ids))).scalars()
        return [as_utc(t) for t in rows]


@pytest.mark.postgres
def test_a_batch_that_commits_late_is_still_new_data_after_a_cutoff_read_meanwhile(db_url: str, engine: Engine) -> None:
    """Two ingest members on PostgreSQL: member A's write has begun and waits (a third transaction holds one of
    its event ids); member B writes and commits a later batch; a training reads its cutoff now. A's events,
    committed after that read, must still be newer than the cutoff: they count as new data for the next
    training. (Stamped before the write and cut off at the newest stamp, they fell behind it for good.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("several writers at once: PostgreSQL")
    member_b, blocker_engine = make_engine(db_url), make_engine(db_url)
    batch_a, batch_b = _batch(0, 20), _batch(100, 20)
    try:
        with blocker_engine.connect() as blocker:
            blocker.begin()
            events_repo.insert_feedback(session=Session(bind=blocker), rows=[feedback(0)])  # A's "e0", uncommitted
            writing = threading.Thread(target=write_batch, args=(engine, batch_a))
            writing.start()
            assert wait_until(lambda: _waiting_on_a_lock(blocker_engine), 30, "member A to wait on the lock")
            assert write_batch(member_b, batch_b).stored == 20
            with session_scope(engine) as s:
                cutoff = events_repo.settled_cutoff(session=s)
                newest = events_repo.latest_ingested_at(session=s)
            blocker.rollback()
        writing.join(30)
        assert not writing.is_alive()
        assert cutoff is not None and newest is not None
        stamps_a = _ingested_at(engine, [f"e{i}" for i in range(20)])
        assert len(stamps_a) == 20
        assert max(stamps_a) < as_utc(newest)  # A began first: the newest stamp alone would have hidden it
        assert min(stamps_a) > cutoff
        with session_scope(engine) as s:
            assert events_repo.count_feedback(session=s, since=cutoff) == 40
    finally:
        member_b.dispose()
        blocker_engine.dispose()


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as c:
        return bool(c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'")).scalar())


def test_sqlite_stamps_a_batch_after_taking_the_write_lock(tmp_path: Path) -> None:
    """One writer at a time on SQLite: a batch that waited for the lock is stamped after the rows of the
    transaction it waited for, so `ingested_at` follows commit order. (Stamped before waiting, it was older
    than rows committed before it.)"""
    url = f"sqlite:///{tmp_path / 'order.db'}"
    engine, blocker_engine = make_engine(url), make_engine(url)
    upgrade(engine)
    try:
        with blocker_engine.connect() as blocker:
            blocker.begin()
            events_repo.insert_feedback(session=Session(bind=blocker), rows=[feedback(900)])  # the write lock
            writing = threading.Thread(target=write_batch, args=(engine, _batch(0, 20)))
            writing.start()
            threading.Event().wait(0.5)  # A is waiting for the lock
            stamped = utcnow()
            events_repo.insert_feedback(session=Session(bind=blocker), rows=[feedback(901, ingested_at=stamped)])
            blocker.commit()
        writing.join(30)
        assert not writing.is_alive()
        stamps_a = _ingested_at(engine, [f"e{i}" for i in range(20)])
        assert len(stamps_a) == 20 and min(stamps_a) > stamped
    finally:
        engine.dispose()
        blocker_engine.dispose()


def test_the_ingest_engine_bounds_each_wait_to_a_quarter_of_the_poll_interval(db_url: str, engine: Engine) -> None:
    """The general statement timeout (120 s) is twice the poll interval (60 s): one stuck statement used to cost
    the member its place in the group. The ingest engine waits at most 15 s (or the configured timeout when
    shorter; SQLite's lock wait at most 5 s)."""
    from daemon.ingest.writer import make_ingest_engine

    def waits(statement_timeout_ms: int) -> str:
        eng = make_ingest_engine(db_url, {"connect_timeout_s": 5, "statement_timeout_ms": statement_timeout_ms},
                                 max_poll_interval_ms=60_000)
        try:
            with eng.connect() as c:
                if eng.dialect.name == "postgresql":
                    return str(c.execute(text("SHOW statement_timeout")).scalar())
                return str(c.execute(text("PRAGMA busy_timeout")).scalar())
        finally:
            eng.dispose()

    if engine.dialect.name == "postgresql":
        assert [waits(120_000), waits(5_000), waits(0)] == ["15s", "5s", "15s"]
    else:
        assert waits(120_000) == "5000"


def _wal_frames_after_writes(engine: Engine) -> int:
    """Write about 2,000 pages in 10 transactions through `engine`, then return how many frames the WAL
    holds since its last reset (`wal_checkpoint(PASSIVE)`'s second value)."""
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS pages (x BLOB)"))
    for _ in range(10):
        with engine.begin() as c:
            c.execute(text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
                           "INSERT INTO pages SELECT randomblob(4000) FROM n"))
    with engine.connect() as c:
        return int(c.execute(text("PRAGMA wal_checkpoint(PASSIVE)")).one()[1])


def test_the_sqlite_ingest_engine_checkpoints_ten_times_less_often_with_a_larger_cache(tmp_path: Path) -> None:
    """SQLite's default checkpoints the WAL once it holds 1,000 pages, and the next write starts it over; the
    ingest engine lets it grow to 10,000 (`writer.SQLITE_WAL_AUTOCHECKPOINT_PAGES`), so about 2,000 pages
    written in 10 commits are still all in its WAL; and its page cache is 64 MiB, not 2 MiB. Other engines
    keep the defaults."""
    from daemon.ingest.writer import SQLITE_WAL_AUTOCHECKPOINT_PAGES, make_ingest_engine

    plain = make_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    ingest = make_ingest_engine(f"sqlite:///{tmp_path / 'ingest.db'}",
                                {"connect_timeout_s": 5, "statement_timeout_ms": 0}, max_poll_interval_ms=60_000)
    try:
        with ingest.connect() as c:
            assert c.execute(text("PRAGMA wal_autocheckpoint")).scalar() == SQLITE_WAL_AUTOCHECKPOINT_PAGES == 10_000
            assert c.execute(text("PRAGMA cache_size")).scalar() == -65_536  # KiB
        with plain.connect() as c:
            assert c.execute(text("PRAGMA cache_size")).scalar() == -2_000  # SQLite's default
        assert _wal_frames_after_writes(plain) < 1_500
        assert _wal_frames_after_writes(ingest) > 1_900
    finally:
        plain.dispose()
        ingest.dispose()
