"""`ranktune`: the command line. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from adapters.errors import RanktuneError
from daemon.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]

# Modules that add sub-commands: each has `register(subparsers) -> None` and sets `handler` defaults.
COMMAND_MODULES: tuple[str, ...] = (
    "daemon.commands.db",
    "daemon.commands.bench",
    "daemon.commands.ingest",
    "daemon.commands.simulate",
    "daemon.commands.serve",
    "daemon.commands.adapters",
    "daemon.commands.status",
    "daemon.commands.train",
    "daemon.commands.run",
    "daemon.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ranktune", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings (env vars win).")
    parser.add_argument("--log-level", default=None, help="Override RANKTUNE_LOG_LEVEL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def configure_logging(level: str, fmt: str = "text") -> None:
    """Text or JSON lines on stderr (`daemon.logs`); noisy libraries stay at WARNING or above."""
    from daemon import logs

    logs.configure_logging(level, fmt)


def main(argv: Sequence[str] | None = None) -> int:
    # The base model ships with the package; nothing is ever fetched from a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(args.config)
    except RanktuneError as exc:
        print(f"ranktune: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level or settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except RanktuneError as exc:
        logging.getLogger("ranktune").error("%s", exc)
        print(f"ranktune: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
