"""`ranktune ingest`: run the ingestion consumer alone until SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import argparse
import logging

from daemon.consumer import Ingestor
from daemon.ingest_writer import bound_sqlite_wait
from daemon.lifecycle import install_signal_handlers
from daemon.settings import Settings
from storage.db import ensure_schema, make_engine

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ingest",
        help="Consume feedback and catalog events into the database (until SIGTERM).",
        description="Creates missing topics, consumes the feedback and catalog topics, stores valid events, "
        "dead-letters the rest and commits offsets after each stored batch. SIGTERM/SIGINT finish the batch "
        "and exit 0; a second Ctrl-C kills.",
    )
    p.add_argument("--no-create-topics", action="store_true", help="Do not try to create missing topics.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        ensure_schema(engine)
        # a locked SQLite file must not stall the poll loop past max_poll_interval
        bound_sqlite_wait(engine, min(5.0, settings.kafka_max_poll_interval_ms / 4000))
        ingestor = Ingestor(settings, engine, create_topics=not args.no_create_topics)
        restore = install_signal_handlers(ingestor.stop)
        try:
            ingestor.run()
        finally:
            restore()
        return 0
    finally:
        engine.dispose()
