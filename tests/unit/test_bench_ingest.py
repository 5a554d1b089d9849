"""`ranktune bench ingest` times raw kafka-python and ranktune over the same window: after the first batch."""

from __future__ import annotations

from pathlib import Path

from daemon.tools.bench_ingest import _TimedStats


def test_ranktune_is_timed_from_its_first_commit_counting_only_the_records_after_it() -> None:
    stats = _TimedStats(total=10)
    stats.add(consumed=4)
    assert stats.first_at is None  # parsed is not done: the window opens at the first commit
    stats.add(stored=3, dead_lettered=1)
    stats.add(batches=1)
    assert stats.first_at is not None and stats.first_records == 4 and not stats.done.is_set()
    stats.add(consumed=6, stored=5, duplicates=1)
    assert not stats.done.is_set()  # done at a commit, not before
    stats.add(batches=1)
    assert stats.done.is_set() and stats.done_at is not None and stats.done_at >= stats.first_at


def test_a_first_batch_that_holds_everything_is_done_at_once() -> None:
    stats = _TimedStats(total=5)
    stats.add(consumed=5, stored=5)
    stats.add(batches=1)
    assert stats.done.is_set() and stats.first_records == 5 and stats.done_at == stats.first_at


def test_the_sqlite_rate_pays_for_what_the_run_left_in_the_wal(tmp_path: Path) -> None:
    """The bench ends ranktune's SQLite window with a full checkpoint (`_final_checkpoint`): the WAL is
    empty after it, so a run that checkpoints less often still pays for its pages."""
    from sqlalchemy import text

    from daemon.tools.bench_ingest import _final_checkpoint
    from storage.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x BLOB)"))
            c.execute(text("INSERT INTO t VALUES (randomblob(100000))"))
        assert (tmp_path / "b.db-wal").stat().st_size > 100_000
        assert _final_checkpoint(engine) >= 0.0
        assert (tmp_path / "b.db-wal").stat().st_size == 0
    finally:
        engine.dispose()


def test_uuid_event_ids_replace_only_the_ids_of_valid_feedback_deterministically() -> None:
    """`--event-ids uuid`: every valid feedback event gets its own random UUID, the same for the same seed;
    catalog and malformed records are sent as they were."""
    import json
    import uuid

    from daemon.tools.bench_ingest import _with_ids
    from daemon.tools.simulate import SimConfig, generate

    records = list(generate(SimConfig(seed=3, n_events=300, malformed_rate=0.05)))
    assert _with_ids(records, "sequential", 3) is records
    once, again = _with_ids(records, "uuid", 3), _with_ids(records, "uuid", 3)
    assert once == again and len(once) == len(records)
    ids = []
    for before, after in zip(records, once, strict=True):
        if before.kind != "feedback":
            assert after == before
            continue
        old, new = json.loads(before.value), json.loads(after.value)
        assert uuid.UUID(new.pop("event_id")).version == 4
        old.pop("event_id")
        assert new == old
        ids.append(json.loads(after.value)["event_id"])
    assert len(ids) == len(set(ids)) == 300
