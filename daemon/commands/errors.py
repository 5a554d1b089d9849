"""Errors of the command line (imported by `daemon.cli` before any command module, so kept light)."""

from __future__ import annotations

from daemon.errors import DaemonError, StartupCheckFailed


class UsageError(DaemonError, ValueError):
    """The command line is wrong (exit 2); the message says what is needed."""


class DatabaseMissing(StartupCheckFailed):
    """A command that reads the database found no database file (it never creates one)."""
