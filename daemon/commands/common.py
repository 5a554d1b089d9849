"""Opening the database for commands that only read it (`status`, `adapters`, `db current`)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine, make_url

from daemon.commands.errors import DatabaseMissing
from daemon.settings import Settings
from storage.db import current_revision, head_revision, make_engine
from storage.errors import SchemaOutdated


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return None if parsed.database.startswith("file:") else Path(parsed.database)


def open_existing(settings: Settings) -> Engine:
    """An engine on the configured database, for commands that must not create or migrate it.

    A missing SQLite file is an error (connecting would create it), and so is a schema that is not the
    current one (`ensure_schema` would create it in a new file; here nothing is written).
    """
    path = sqlite_file(settings.storage.sqlalchemy_url)
    if path is not None and not path.is_file():
        raise DatabaseMissing(
            f"no database at {path} (RANKTUNE_STORAGE_DATABASE_URL={settings.storage.database_url}); "
            "`ranktune db upgrade` creates it, and so does starting the daemon")
    engine = make_engine(settings.storage.sqlalchemy_url, **settings.storage.engine_options)
    try:
        current, head = current_revision(engine), head_revision()
        if current != head:
            raise SchemaOutdated(f"database schema is at {current or 'nothing'}, this ranktune needs {head}: "
                                 "run `ranktune db upgrade` (with the same RANKTUNE_STORAGE_DATABASE_URL)")
    except BaseException:
        engine.dispose()
        raise
    return engine
