"""`ranktune db upgrade|current`: schema management."""

from __future__ import annotations

import argparse

from daemon.settings import Settings
from storage.db import current_revision, head_revision, make_engine, upgrade


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="Database schema: upgrade to the current revision, or show it.")
    p.add_argument("action", choices=["upgrade", "current"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.storage.sqlalchemy_url)
    try:
        if args.action == "upgrade":
            before = current_revision(engine)
            upgrade(engine)
            print(f"schema: {before or 'empty'} -> {head_revision()}")
        else:
            cur = current_revision(engine)
            head = head_revision()
            print(f"current: {cur or 'empty'}  head: {head}  {'up to date' if cur == head else 'OUTDATED'}")
        return 0
    finally:
        engine.dispose()
