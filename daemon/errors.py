"""Errors of the daemon: settings, Kafka, API requests."""

from __future__ import annotations

from adapters.errors import RanktuneError


class DaemonError(RanktuneError):
    """The daemon could not do what was asked."""


class ConfigError(DaemonError, ValueError):
    """Settings are invalid; the message names the field."""


class BrokerUnavailable(DaemonError, ConnectionError):
    """The Kafka broker cannot be reached."""


class StartupCheckFailed(DaemonError, RuntimeError):
    """A start-up check failed (schema, broker, base model); the message says how to fix it."""


class AuthError(DaemonError, PermissionError):
    """Missing or wrong operator token."""


class BadRequest(DaemonError, ValueError):
    """A client request is malformed or over a limit."""


class Overloaded(DaemonError, RuntimeError):
    """The scorer queue is full; the client should retry later."""


class DeadLetterFailed(DaemonError, RuntimeError):
    """A reject could not be dead-lettered for good (a non-retriable broker error): the ingest loop stops
    without committing its batch, so the record is consumed again after the restart, never lost."""
