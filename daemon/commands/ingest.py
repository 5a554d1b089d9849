"""`ranktune ingest`: run the ingestion consumer alone until SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import argparse

from daemon.settings import Settings


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
    from daemon.app import Application

    return Application(settings, ["ingest"], create_topics=not args.no_create_topics).run()
