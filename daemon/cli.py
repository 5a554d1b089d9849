"""`ranktune`: the command line. Each command lives in its own module and registers itself here.

Errors are one line on stderr, `ranktune: <message>` (under `--json`: `{"error": {"code", "message"}}`),
printed once; exit 2 for usage and configuration errors, 1 for failures, 130 for Ctrl-C. Only the module of
the command that runs is imported, so a quick command (`adapters list`) never loads the model stack.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import NoReturn, get_args

from adapters.errors import RanktuneError
from daemon.commands.errors import UsageError
from daemon.errors import ConfigError
from daemon.settings import LogLevel, Settings, unknown_env_vars

Handler = Callable[[argparse.Namespace, Settings], int]

# Sub-command -> module with `register(subparsers) -> None` that sets a `handler` default.
COMMAND_MODULES: dict[str, str] = {name: f"daemon.commands.{name}" for name in (
    "db", "bench", "ingest", "simulate", "serve", "adapters", "status", "train", "eval", "run", "demo")}
_GLOBAL_VALUE_OPTIONS = ("--config", "--log-level")
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a `UsageError` (one line, exit 2), not usage text and `sys.exit`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")  # printed after "ranktune: ", once


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)} (any case), got {text!r}")
    return level


def version() -> str:
    try:
        return metadata.version("ranktune")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only` (a command name), only that command's module is imported and registered."""
    parser = Parser(prog="ranktune", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ranktune {version()}")
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings (env vars win).")
    parser.add_argument("--log-level", type=_log_level, default=None,
                        help="Override RANKTUNE_LOG_LEVEL (debug, info, warning, error; any case).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMAND_MODULES.items():
        if only is None or name == only:
            importlib.import_module(module).register(sub)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named in `argv` (skipping global options and their values), if it is a known one."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMAND_MODULES else None
    return None


def configure_logging(level: str, fmt: str = "text") -> None:
    """Text or JSON lines on stderr (`daemon.logs`); noisy libraries stay at WARNING or above."""
    from daemon import logs

    logs.configure_logging(level, fmt)


def error_code(exc: BaseException) -> str:
    """`SchemaOutdated` -> `schema_outdated` (the API's codes are spelled the same way)."""
    if isinstance(exc, UsageError):
        return "usage_error"
    if isinstance(exc, ConfigError):
        return "config_error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _report(exc: BaseException, *, as_json: bool, message: str | None = None) -> None:
    text = one_line(message or str(exc))
    if as_json:
        sys.stderr.write(json.dumps({"error": {"code": error_code(exc), "message": text}}) + "\n")
    else:
        sys.stderr.write(f"ranktune: {text}\n")


def _warn(text: str, *, as_json: bool) -> None:
    sys.stderr.write((json.dumps({"warning": text}) if as_json else f"ranktune: warning: {text}") + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    # The base model ships with the package; nothing is ever fetched from a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args_in = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_in
    try:
        args = build_parser(command_of(args_in)).parse_args(args_in)
        settings = Settings.load(args.config)
        if args.log_level:  # the override reaches child processes (training) through the settings too
            settings = settings.replace(log_level=args.log_level)
    except (UsageError, ConfigError) as exc:
        _report(exc, as_json=as_json)
        return 2
    for line in unknown_env_vars():
        _warn(line, as_json=as_json)
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except (UsageError, ConfigError) as exc:
        _report(exc, as_json=as_json)
        return 2
    except RanktuneError as exc:
        _report(exc, as_json=as_json)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an unexpected environment: still one line; the traceback at debug
        logging.getLogger("ranktune").debug("unexpected error", exc_info=True)
        hint = "" if settings.log_level == "DEBUG" else " (--log-level debug shows the traceback)"
        _report(exc, as_json=as_json, message=f"unexpected error: {type(exc).__name__}: {exc}{hint}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
