"""Storage on SQLite and PostgreSQL: schema check, idempotent writes, catalog ordering, registry."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, inspect, text

from storage import events_repo, registry
from storage.db import ensure_schema, head_revision, make_engine, session_scope, sqlite_pragmas, upgrade
from storage.errors import ChampionChanged, InvalidTransition, SchemaOutdated, VersionNotFound
from storage.models import AdapterVersion, FeedbackEvent

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def feedback(i: int, **kw: object) -> dict[str, object]:
    row: dict[str, object] = dict(
        event_id=f"e{i}", ts=T0 + timedelta(seconds=i), query="red shoe", item_id=f"i{i % 5}",
        action="click", item_text=None, position=i % 10, request_id=f"r{i // 10}", session_hash=None,
        user_hash=None, topic="ranktune.feedback", partition=0, offset=i, ingested_at=T0 + timedelta(seconds=i),
    )
    row.update(kw)
    return row


def test_new_sqlite_file_gets_current_schema(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    ensure_schema(eng)
    assert "feedback_events" in inspect(eng).get_table_names()
    with eng.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("select version_num from alembic_version")).scalar() == head_revision()


def test_sqlite_pragmas_apply_on_connect_or_at_every_checkout(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    sqlite_pragmas(eng, {"cache_size": -4096})
    wait = {"ms": 1234}
    sqlite_pragmas(eng, {"busy_timeout": wait["ms"]}, on="checkout")
    with eng.connect() as c:
        assert c.execute(text("PRAGMA cache_size")).scalar() == -4096
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 1234  # the checkout's value, not make_engine's 30 s
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1  # make_engine's own listener still runs
        c.execute(text("PRAGMA busy_timeout=5"))
    with eng.connect() as c:  # the same pooled connection, set again at checkout
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 1234
    for bad in ({"cache_size; DROP TABLE x": 1}, {"journal_mode": "WAL; DELETE"}):
        with pytest.raises(ValueError, match="not a PRAGMA setting"):
            sqlite_pragmas(eng, bad)


def test_outdated_schema_is_refused_with_the_fix(db_url):
    eng = make_engine(db_url)
    if eng.dialect.name == "sqlite":
        # an existing SQLite database with tables but no migration record is not silently "fixed"
        with eng.begin() as c:
            c.execute(text("create table other (x int)"))
    with pytest.raises(SchemaOutdated, match="ranktune db upgrade"):
        ensure_schema(eng)
    upgrade(eng)
    ensure_schema(eng)  # now current: no error


def test_one_process_trains_on_a_database_at_a_time(engine, db_url):
    from storage.lease import exclusive_training, renew, try_acquire

    other = make_engine(db_url)  # another process's engine
    try:
        with exclusive_training(engine) as first:
            assert first
            with exclusive_training(other) as second:
                assert not second
        with exclusive_training(other) as after:
            assert after  # released when the holder's block ended
        # a holder that died (or lost the database) leaves a lease that expires by itself
        assert try_acquire(engine, "dead-holder", ttl_s=0.3)
        assert not try_acquire(other, "someone-else", ttl_s=60)
        threading.Event().wait(0.5)
        assert try_acquire(other, "someone-else", ttl_s=60)
        assert not renew(engine, "dead-holder", ttl_s=60)  # the dead holder cannot take it back by renewing
    finally:
        other.dispose()


def test_a_held_lease_is_renewed_while_the_training_runs(engine, db_url):
    from storage.lease import exclusive_training, try_acquire

    other = make_engine(db_url)
    try:
        with exclusive_training(engine, ttl_s=0.6) as held:
            assert held
            for _ in range(4):  # 1.2 s: twice the lease, renewed every 0.2 s
                threading.Event().wait(0.3)
                assert not try_acquire(other, "someone-else", ttl_s=60)
    finally:
        other.dispose()


def test_a_lease_that_expired_is_renewed_unless_another_process_took_it(engine, db_url):
    """A holder cut off longer than its lease: nobody took it, so the next renewal keeps it (no `on_lost`);
    another process took it, so the next renewal calls `on_lost` and stops renewing."""
    from sqlalchemy import update

    from storage.lease import exclusive_training, try_acquire
    from storage.models import TrainingLease, utcnow

    def expire() -> None:  # the holder was cut off past its lease
        with session_scope(engine) as s:
            s.execute(update(TrainingLease).values(expires_at=utcnow() - timedelta(seconds=1)))

    def take() -> None:  # ... and another process took the expired lease
        with session_scope(engine) as s:
            s.execute(update(TrainingLease).values(holder="other-host:1:thief",
                                                   expires_at=utcnow() + timedelta(hours=1)))

    lost = threading.Event()
    other = make_engine(db_url)
    try:
        with exclusive_training(engine, ttl_s=0.6, on_lost=lost.set) as held:
            assert held
            expire()
            threading.Event().wait(0.5)  # two renewal periods
            assert not lost.is_set()
            assert not try_acquire(other, "someone-else", ttl_s=60)  # renewed: held again
            take()
            assert lost.wait(5)
        assert not try_acquire(other, "someone-else", ttl_s=60)  # still the thief's: not released by the loser
    finally:
        other.dispose()


def test_feedback_insert_is_idempotent(engine):
    rows = [feedback(i) for i in range(20)]
    with session_scope(engine) as s:
        first = events_repo.insert_feedback(session=s, rows=rows[:15])
    with session_scope(engine) as s:
        second = events_repo.insert_feedback(session=s, rows=[*rows, rows[3]])
    assert (first.stored, first.duplicates) == (15, 0)
    assert (second.stored, second.duplicates) == (5, 16)
    with session_scope(engine) as s:
        assert events_repo.count_feedback(session=s) == 20
        assert events_repo.count_feedback(session=s, since=T0 + timedelta(seconds=9)) == 10


def test_feedback_insert_counts_exactly_across_statements(engine, monkeypatch: pytest.MonkeyPatch):
    # SQLite: several multi-row statements per call (3 rows each here), duplicates inside a batch and
    # against stored rows; each statement's rowcount is added up
    monkeypatch.setattr(events_repo, "SQLITE_ROWS_PER_STATEMENT", 3)
    rows = [feedback(i) for i in range(11)]
    with session_scope(engine) as s:
        assert events_repo.insert_feedback(session=s, rows=rows[:4]) == events_repo.WriteResult(4, 0)
    with session_scope(engine) as s:
        assert events_repo.insert_feedback(session=s, rows=[*rows, rows[7], rows[0]]) == events_repo.WriteResult(7, 6)
    with session_scope(engine) as s:
        got = events_repo.recent_feedback(session=s, limit=20)
    assert sorted(e.event_id for e in got) == sorted(f"e{i}" for i in range(11))
    assert {e.event_id: e.offset for e in got} == {f"e{i}": i for i in range(11)}  # each row's own values


@settings(max_examples=200, deadline=None)
@given(value=st.datetimes(timezones=st.none() | st.timezones()) | st.dates() | st.none())
def test_the_fast_sqlite_datetime_processor_formats_as_sqlalchemys(value: object) -> None:
    from sqlalchemy.dialects import sqlite

    reference = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert reference is not None
    assert events_repo._fast_sqlite_datetime(reference)(value) == reference(value)


def test_feedback_rows_are_stored_as_sqlalchemy_stores_them(engine):
    # insert_feedback sends SQLite rows through the driver (multi-row statements): the stored values must be
    # exactly what a plain SQLAlchemy insert stores (timestamps in SQLAlchemy's text format, NULLs, ints)
    rows = [feedback(i, ts=datetime(1, 2, 3, 4, 5, 6, tzinfo=UTC) if i == 0 else T0 + timedelta(microseconds=i),
                     item_text="t\u00e9xt" if i % 2 else None, user_hash="h" * 64) for i in range(4)]
    with session_scope(engine) as s:
        assert events_repo.insert_feedback(session=s, rows=rows) == events_repo.WriteResult(4, 0)
        s.execute(insert(FeedbackEvent), [r | {"event_id": f"x{r['event_id']}"} for r in rows])
    with engine.connect() as c:
        stored = c.execute(text("select * from feedback_events order by event_id")).mappings().all()
    ours, theirs = stored[:4], stored[4:]
    assert [dict(r) | {"event_id": "x" + r["event_id"]} for r in ours] == [dict(r) for r in theirs]
    with session_scope(engine) as s:
        got = {e.event_id: e for e in events_repo.recent_feedback(session=s, limit=10)}
    assert got["e0"].ts.replace(tzinfo=None) == datetime(1, 2, 3, 4, 5, 6)
    assert got["e3"].item_text == "t\u00e9xt" and got["e3"].position == 3 and got["e3"].offset == 3


def test_catalog_upsert_keeps_the_newest(engine):
    def item(title: str, ts: datetime) -> dict[str, object]:
        return dict(item_id="sku-1", title=title, description=None, category="boots", brand="acme",
                    attributes={"colour": "black"}, ts=ts, updated_at=ts)

    with session_scope(engine) as s:
        events_repo.upsert_catalog(session=s, rows=[item("v2", T0 + timedelta(hours=1))])
    with session_scope(engine) as s:
        events_repo.upsert_catalog(session=s, rows=[item("v1", T0)])  # older: ignored
    with session_scope(engine) as s:
        assert events_repo.catalog_items(session=s)["sku-1"].title == "v2"
        events_repo.upsert_catalog(session=s, rows=[item("v3", T0 + timedelta(hours=2)), item("v0", T0)])
    with session_scope(engine) as s:
        got = events_repo.catalog_items(session=s)["sku-1"]
        assert got.title == "v3"
        assert got.attributes == {"colour": "black"}


def _version(s, name: str) -> None:
    registry.add_version(session=s, version=AdapterVersion(
        version=name, base_model="m", quantization="nf4", status="candidate", artifact_path=f"/a/{name}",
        checksum="0" * 64, created_at=T0))


def test_next_version_name_skips_orphan_artifact_folders(engine, tmp_path):
    """#14: a crash between the artifact rename and the registry insert leaves a folder; the next name must
    not collide with it (it used to be the row count + 1)."""
    artifacts = tmp_path / "artifacts"
    with session_scope(engine) as s:
        assert registry.next_version_name(session=s, artifacts_dir=artifacts) == "v0001"  # no folder yet
        for v in ("v0001", "v0002"):
            _version(s, v)
        artifacts.mkdir()
        for name in ("v0001", "v0002", "v0003", ".tmp-v0009-x", "v0007.bak", "notes"):  # v0003: the orphan
            (artifacts / name).mkdir()
        assert registry.next_version_name(session=s, artifacts_dir=artifacts) == "v0004"
        (artifacts / "v0010").mkdir()
        assert registry.next_version_name(session=s, artifacts_dir=artifacts) == "v0011"
        _version(s, "v0012")  # a gap in the rows (e.g. v0011's folder was swept) still counts from the highest
        assert registry.next_version_name(session=s) == "v0013"


def test_registry_promote_and_rollback_follow_history(engine):
    with session_scope(engine) as s:
        assert registry.champion(session=s) == "base"
        assert registry.next_version_name(session=s) == "v0001"
        for v in ("v0001", "v0002", "v0003"):
            _version(s, v)
        assert registry.next_version_name(session=s) == "v0004"
    with session_scope(engine) as s:
        registry.promote(session=s, version="v0001", actor="gate")
        registry.promote(session=s, version="v0002", actor="alice", reason="better")
        registry.promote(session=s, version="v0003", actor="alice")
    # a rollback to a target that is no longer `previous` writes nothing
    with pytest.raises(ChampionChanged, match="v0002"), session_scope(engine) as s:
        registry.rollback(session=s, actor="bob", to="v0001")
    with session_scope(engine) as s:
        assert registry.champion(session=s) == "v0003"
        row = registry.rollback(session=s, actor="bob", reason="bad", to="v0002")
        assert (row.from_version, row.to_version) == ("v0003", "v0002")
    with session_scope(engine) as s:
        registry.rollback(session=s, actor="bob")
        assert registry.champion(session=s) == "v0001"
        registry.rollback(session=s, actor="bob")
        assert registry.champion(session=s) == "base"
        with pytest.raises(InvalidTransition):
            registry.rollback(session=s, actor="bob")
    with session_scope(engine) as s:
        statuses = {v.version: v.status for v in registry.list_versions(session=s)}
        assert statuses == {"v0001": "retired", "v0002": "retired", "v0003": "retired"}
        log = registry.audit_log(session=s)
        assert [a.action for a in log] == ["rollback"] * 3 + ["promote"] * 3
        assert log[-2].actor == "alice" and log[-2].reason == "better"


def test_registry_refuses_unknown_and_repeated_promotion(engine):
    with session_scope(engine) as s:
        _version(s, "v0001")
        with pytest.raises(VersionNotFound):
            registry.promote(session=s, version="v0404", actor="x")
        registry.promote(session=s, version="v0001", actor="x")
        with pytest.raises(InvalidTransition):
            registry.promote(session=s, version="v0001", actor="x")


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_postgres_connect_timeout_gives_up_on_a_server_that_never_answers() -> None:
    """#14: a black-holed database must fail the caller (who backs off and retries), not hang its loop."""
    import socket

    from sqlalchemy.exc import OperationalError

    from storage.db import make_engine

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever answers the startup packet
    port = silent.getsockname()[1]
    engine = make_engine(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout_s=2)
    try:
        with pytest.raises(OperationalError, match="timeout"):
            engine.connect()
    finally:
        engine.dispose()
        silent.close()


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_postgres_statement_timeout_cancels_a_stuck_statement(db_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from daemon.settings import Settings
    from storage.db import make_engine

    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only (SQLite has its busy timeout)")
    storage = Settings.load(storage_database_url=db_url, storage_statement_timeout_ms=300).storage
    engine = make_engine(storage.sqlalchemy_url, **storage.engine_options)
    try:
        with engine.connect() as c:
            assert c.execute(text("show statement_timeout")).scalar_one() == "300ms"
            with pytest.raises(OperationalError, match="statement timeout"):
                c.execute(text("select pg_sleep(30)"))
    finally:
        engine.dispose()
    assert Settings.load().storage.engine_options == {"connect_timeout_s": 10, "statement_timeout_ms": 120_000}


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_write_patiently_waits_out_a_cut_link_and_gives_up_when_told(
    pg_url: str, tcp_proxy: type, caplog: pytest.LogCaptureFixture,
) -> None:
    """#14: a write through a cut link is retried until the link is back (no second row: one transaction),
    given up after its patience or at a stop (DatabaseUnavailable), and a wrong statement is not retried."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy.exc import ProgrammingError
    from sqlmodel import Session

    from storage.db import write_patiently
    from storage.errors import DatabaseUnavailable

    proxy = tcp_proxy("127.0.0.1", 5432)
    engine = make_engine(pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/"), connect_timeout_s=2)
    tries: list[int] = []

    def write(s: Session) -> int:
        tries.append(1)
        return int(registry.start_run(session=s, trigger="manual").id or 0)

    try:
        proxy.cut()
        with pytest.raises(DatabaseUnavailable, match="cannot start a run"):
            write_patiently(engine, write, what="start a run", patience_s=1.2, max_delay_s=0.2)
        tried = len(tries)
        with pytest.raises(DatabaseUnavailable):
            write_patiently(engine, write, what="start a run", patience_s=None, should_stop=lambda: True)
        assert tried >= 2 and len(tries) == tried + 1  # retried within the patience; one try once stopped
        caplog.set_level("WARNING", logger="storage.db")
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(write_patiently, engine, write, what="start a run", patience_s=None)
            while "waiting for the database" not in caplog.text:
                threading.Event().wait(0.1)
            proxy.restore()
            run_id = waiting.result(timeout=60)
        with session_scope(make_engine(pg_url)) as s:
            assert [r.id for r in registry.recent_runs(session=s)] == [run_id]
        with pytest.raises(ProgrammingError):
            write_patiently(engine, lambda s: s.execute(text("select * from no_such_table")), what="read",
                            patience_s=None)
    finally:
        engine.dispose()


def test_racing_promotes_and_rollbacks_leave_exactly_one_champion(engine):
    """#14 (verifies main's compare-and-set): 8 threads promote, roll back and auto-promote at random; one
    champion afterwards, its row the only one with status champion, and one audit row per action that
    took effect."""
    import random
    import threading

    from daemon.training.promotion import promote, rollback
    from storage.errors import ChampionChanged
    from storage.models import AuditLog

    names = [f"v{i:04d}" for i in range(1, 7)]
    with session_scope(engine) as s:
        for v in names:
            _version(s, v)
    applied: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(12):
            try:
                if rng.random() < 0.3:
                    rollback(engine=engine, actor=f"t{seed}")
                else:
                    with session_scope(engine) as s:
                        seen = registry.champion(session=s)
                    target = rng.choice(names)
                    expected = seen if rng.random() < 0.5 else None  # auto-promote expects what it gated against
                    promote(engine=engine, version=target, actor=f"t{seed}", expected=expected)
            except (ChampionChanged, InvalidTransition):
                continue
            with lock:
                applied.append(f"t{seed}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert applied
    with session_scope(engine) as s:
        champion = registry.champion(session=s)
        rows = s.execute(text("select version from adapter_versions where status = 'champion'")).scalars().all()
        assert list(rows) == ([] if champion == "base" else [champion])
        actions = s.execute(text("select count(*) from audit_log where action in ('promote', 'rollback')")).scalar()
        assert actions == len(applied)
        last = s.query(AuditLog).order_by(AuditLog.id.desc()).first()
        assert last is not None and (last.to_version or "base") == champion


@pytest.mark.postgres
def test_a_pooled_connection_that_fails_its_ping_is_replaced_not_raised(pg_url: str, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    """#14: after a link cut mid-statement psycopg's connection answers the pool's ping with "can't change
    'autocommit' now" (ProgrammingError, not a disconnect to SQLAlchemy); the checkout must reconnect."""
    import psycopg

    engine = make_engine(pg_url)
    with engine.connect() as c:  # one connection in the pool
        pid = c.execute(text("select pg_backend_pid()")).scalar()
    dialect = engine.dialect
    real_ping = dialect.do_ping
    failed: list[int] = []

    def ping(dbapi_conn: Any) -> bool:
        if not failed:
            failed.append(1)
            raise psycopg.ProgrammingError("can't change 'autocommit' now: connection in transaction status ACTIVE")
        return bool(real_ping(dbapi_conn))

    monkeypatch.setattr(dialect, "do_ping", ping)
    with engine.connect() as c:
        assert c.execute(text("select pg_backend_pid()")).scalar() != pid  # a fresh connection
    assert failed == [1]
    engine.dispose()
