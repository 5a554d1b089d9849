"""Errors of the storage layer."""

from __future__ import annotations

from adapters.errors import RanktuneError


class StorageError(RanktuneError):
    """The database could not do what was asked."""


class SchemaOutdated(StorageError, RuntimeError):
    """The database schema is older (or newer) than this code expects."""


class DatabaseUnavailable(StorageError, ConnectionError):
    """The database cannot be reached right now (transient; retry with back-off)."""


class VersionNotFound(StorageError, LookupError):
    """No adapter version with that name exists."""


class InvalidTransition(StorageError, ValueError):
    """A registry action that the current state does not allow (e.g. rollback with no previous champion)."""


class ChampionChanged(InvalidTransition):
    """The champion is no longer the one an action expected to replace (compare-and-set failed)."""
