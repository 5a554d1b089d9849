"""`ranktune db upgrade|current`: schema management.

`upgrade` creates a missing SQLite database; `current` only reads (a missing file is an error) and exits 1
when the schema is not the one this ranktune needs, so scripts and health checks can rely on it.
"""

from __future__ import annotations

import argparse

from daemon.commands.common import sqlite_file
from daemon.commands.errors import DatabaseMissing
from daemon.settings import Settings
from storage.db import current_revision, head_revision, make_engine, upgrade


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="Database schema: upgrade to the current revision, or show it.")
    p.add_argument("action", choices=["upgrade", "current"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    path = sqlite_file(settings.storage.sqlalchemy_url)
    if args.action == "current" and path is not None and not path.is_file():
        raise DatabaseMissing(f"no database at {path} (RANKTUNE_STORAGE_DATABASE_URL="
                              f"{settings.storage.database_url}); `ranktune db upgrade` creates it")
    engine = make_engine(settings.storage.sqlalchemy_url, connect_timeout_s=settings.storage.connect_timeout_s,
                         statement_timeout_ms=0)  # a migration may take long
    try:
        if args.action == "upgrade":
            before = current_revision(engine)
            upgrade(engine)
            print(f"schema: {before or 'empty'} -> {head_revision()}")
        else:
            cur = current_revision(engine)
            head = head_revision()
            print(f"current: {cur or 'empty'}  head: {head}  "
                  f"{'up to date' if cur == head else 'OUTDATED: run `ranktune db upgrade`'}")
            return 0 if cur == head else 1
        return 0
    finally:
        engine.dispose()
