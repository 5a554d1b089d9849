"""Bulk feedback writes (binary COPY on PostgreSQL, executemany on SQLite): exactly once, counted right,
refusals still raised as SQLAlchemy errors, every write inside the caller's transaction."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError

from daemon.ingest.events import ParseConfig, Parsed, parse_record
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.writer import write_batch
from storage import events_repo
from storage.db import make_engine, session_scope
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
