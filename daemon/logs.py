"""Log configuration: readable text, or one JSON object per line (`RANKTUNE_LOG_FORMAT=json`).

A JSON line has `ts` (ISO 8601, UTC), `level`, `logger`, `message`, and the context an operator filters
by: `role` (the roles of the process, e.g. `ingest,scheduler,serve`, or `trainer` in the training
child), `adapter_version` (the version this process serves, where it serves one) and `run_id` (the
training run: every line of the training child, and lines logged with `extra={"run_id": ...}` or
inside `run_context(run_id)`); unknown ones are null. A traceback travels in `exc_info`, inside the
line. Formatting is python-json-logger's `JsonFormatter`, a well-kept library, rather than our own.

The context is a `logging.Filter` on the root handler (`LogContext`): role and version are process-wide
and change after start-up (the `Application` binds them once it knows its roles and its scorer), which
a contextvar cannot carry into threads started earlier; the run id is per thread of work, so it is a
contextvar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_RUN_ID: ContextVar[int | None] = ContextVar("ranktune_run_id", default=None)

NOISY_LOGGERS = ("kafka", "httpx", "urllib3", "transformers", "bitsandbytes", "alembic",
                 # one "Running job"/"executed successfully" pair per job run, the heartbeat job included
                 "apscheduler.executors.default")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogContext(logging.Filter):
    """Adds `role`, `adapter_version` and `run_id` to every record that passes the handler."""

    def __init__(self, *, role: str | None = None, run_id: int | None = None) -> None:
        super().__init__()
        self.role = role
        self.run_id = run_id
        self.version: Callable[[], str | None] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "role", None) is None:
            record.role = self.role
        if getattr(record, "adapter_version", None) is None:
            try:
                record.adapter_version = self.version() if self.version is not None else None
            except Exception:  # a log line must never fail because its context cannot be read
                record.adapter_version = None
        if getattr(record, "run_id", None) is None:
            record.run_id = _RUN_ID.get() if _RUN_ID.get() is not None else self.run_id
        return True


class _JsonLines(JsonFormatter):
    """python-json-logger's formatter with ranktune's field names, `ts` first."""

    def __init__(self) -> None:
        super().__init__("{levelname}{name}{message}{role}{adapter_version}{run_id}", style="{",
                         rename_fields={"levelname": "level", "name": "logger"}, timestamp="ts")

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        head: dict[str, Any] = {key: log_record.pop(key) for key in ("ts", "level", "logger", "message")
                                if key in log_record}
        return {**head, **log_record}


def configure_logging(level: str, fmt: str = "text", *, role: str | None = None, run_id: int | None = None,
                      text_format: str = TEXT_FORMAT) -> LogContext:
    """Log to stderr at `level` in `fmt` (`text` or `json`); returns the context filter (see `bind`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines() if fmt == "json" else logging.Formatter(text_format))
    context = LogContext(role=role, run_id=run_id)
    handler.addFilter(context)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # library warnings become records too, so every line has one format
    numeric = logging.getLevelName(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric if isinstance(numeric, int) else 0))
    return context


def bind(*, role: str | None = None, version: Callable[[], str | None] | None = None) -> None:
    """Set the process-wide context on the root handlers configured by `configure_logging` (no-op when
    logging was configured otherwise, e.g. under pytest)."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, LogContext):
                if role is not None:
                    f.role = role
                if version is not None:
                    f.version = version


@contextlib.contextmanager
def run_context(run_id: int | None) -> Iterator[None]:
    """Lines logged by this thread inside the block carry `run_id`."""
    token = _RUN_ID.set(run_id)
    try:
        yield
    finally:
        _RUN_ID.reset(token)
