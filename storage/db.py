"""Engine, sessions and the schema check.

`make_engine` builds one engine per process role from the URL it is given (no module-level engine,
so two databases can live in one test run). SQLite runs in WAL mode with a busy timeout so the
ingester, scheduler and API threads can share one file. `write_patiently` rides out an outage for the
writes that must not be lost (a trained candidate's registration, a training run's end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, create_engine

from storage.errors import DatabaseUnavailable, SchemaOutdated

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
T = TypeVar("T")


DEFAULT_CONNECT_TIMEOUT_S = 10
DEFAULT_STATEMENT_TIMEOUT_MS = 120_000


def make_engine(url: str, *, echo: bool = False, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
                statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS) -> Engine:
    """An engine for `url` (`sqlite:///...` or `postgresql+psycopg://...`).

    On PostgreSQL a connection attempt gives up after `connect_timeout_s` (libpq's `connect_timeout`) and
    every statement after `statement_timeout_ms` (the server's `statement_timeout`; 0: no limit), so a
    black-holed server or a stuck query fails the caller, which retries, instead of hanging its loop.
    SQLite has its lock wait (`busy_timeout`) instead."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
        sqlite_pragmas(engine, {"journal_mode": "WAL", "synchronous": "NORMAL", "busy_timeout": 30_000,
                                "foreign_keys": "ON"})
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout_s)),
                                    "options": f"-c statement_timeout={int(statement_timeout_ms)}"}
    engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)
    event.listen(engine, "handle_error", _failed_ping_is_a_disconnect)
    return engine


def _failed_ping_is_a_disconnect(ctx: Any) -> None:
    """A pooled connection that fails its pre-ping, whatever the error, is dead: replace it, do not raise.

    After a link cut in the middle of a statement, psycopg leaves the connection in transaction status
    ACTIVE, and the ping's first step answers "can't change 'autocommit' now" (a ProgrammingError), which
    SQLAlchemy does not count as a disconnect: the checkout raised instead of reconnecting, so a write
    retried after the cut failed as if its statement were wrong (seen in tests/faults/test_training_db_cut.py).
    """
    if ctx.is_pre_ping:
        ctx.is_disconnect = True


def sqlite_pragmas(engine: Engine, pragmas: Mapping[str, int | str], *, on: str = "connect") -> None:
    """Run `PRAGMA name=value` for each of `pragmas` on this SQLite engine's connections: once per new
    connection (`on="connect"`), or at every checkout from the pool (`on="checkout"`, so that connections
    already pooled get a changed value too). Values are ints or bare keywords (WAL, NORMAL, ON)."""
    for name, value in pragmas.items():
        if not (name.isidentifier() and (isinstance(value, int) or str(value).isalnum())):
            raise ValueError(f"not a PRAGMA setting: {name}={value!r}")
    statements = [f"PRAGMA {name}={value}" for name, value in pragmas.items()]

    def _run(dbapi_conn: Any, *_: Any) -> None:
        cur = dbapi_conn.cursor()
        for statement in statements:
            cur.execute(statement)
        cur.close()

    event.listen(engine, on, _run)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def write_scope(engine: Engine) -> Iterator[Session]:
    """A `session_scope` whose transaction takes the database's write lock first, for read-then-write
    changes that must not interleave (moving the champion alias).

    On SQLite it begins with BEGIN IMMEDIATE: a deferred transaction that has read could not upgrade to a
    write once another writer committed (SQLITE_BUSY_SNAPSHOT), and two such transactions would both act
    on what they read. PostgreSQL needs nothing here: the registry locks the alias row it reads.
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            if engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def unavailable(exc: BaseException) -> bool:
    """True for an error that says the database could not be reached, the link dropped, or the database
    could not do it now (a lock or statement timeout): worth a retry, unlike a wrong statement."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def write_patiently(engine: Engine, write: Callable[[Session], T], *, what: str, patience_s: float | None,
                    should_stop: Callable[[], bool] = lambda: False, max_delay_s: float = 5.0) -> T:
    """`write(session)` in one transaction (`session_scope`), tried again while the database is unavailable:
    for up to `patience_s` seconds (None: until it answers), never once `should_stop()` is true. Raises
    DatabaseUnavailable when it gives up; any other error at once.

    `write` must be idempotent: a commit whose answer the cut swallowed may have landed, and is tried again.
    """
    deadline = None if patience_s is None else time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            with session_scope(engine) as s:
                return write(s)
        except DBAPIError as exc:
            if not unavailable(exc):
                raise
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            if should_stop() or (deadline is not None and time.monotonic() + delay > deadline):
                raise DatabaseUnavailable(f"cannot {what}: the database is unavailable ({reason})") from exc
            log.warning("cannot %s: the database is unavailable (%s); waiting for the database, next try in "
                        "%.1fs", what, reason, delay)
            time.sleep(delay)
            delay = min(2 * delay, max_delay_s)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach the database: {exc.orig}") from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (what `ranktune db upgrade` runs)."""
    command.upgrade(alembic_config(engine), revision)


def ensure_schema(engine: Engine) -> None:
    """Refuse to run on an outdated schema; create a brand-new SQLite database at the current one.

    PostgreSQL is never migrated implicitly: production runs `ranktune db upgrade` as its own step.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None and engine.dialect.name == "sqlite" and not inspect(engine).get_table_names():
        log.info("new SQLite database %s: creating schema at %s", engine.url.database, head)
        upgrade(engine)
        return
    raise SchemaOutdated(
        f"database schema is at {current or 'nothing'}, this ranktune needs {head}: "
        "run `ranktune db upgrade` (with the same RANKTUNE_STORAGE_DATABASE_URL)"
    )
