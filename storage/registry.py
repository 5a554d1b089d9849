"""The adapter registry: immutable versions, moving aliases, training runs, append-only audit.

Aliases: `champion` (what scorers serve) and `previous` (where a rollback goes). The value `base`
means "no adapter": the zero-shot base model. Every alias move appends an audit row in the same
transaction, so the history can always explain the current state.

Moving the champion is compare-and-set: `promote` and `rollback` lock the champion row before they read
it (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite the caller's `storage.db.write_scope` holds the
database's write lock), and refuse with `ChampionChanged` when the caller expected another champion.
Concurrent actions therefore apply one after the other, never both on the same stale champion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from storage.errors import ChampionChanged, InvalidTransition, VersionNotFound
from storage.models import AdapterVersion, AuditLog, DriftReport, RegistryAlias, TrainingRun, as_utc, utcnow

BASE = "base"
CHAMPION = "champion"
PREVIOUS = "previous"


# --- versions --------------------------------------------------------------------------------------
_NUMBERED = re.compile(r"\Av([0-9]{4,})\Z", re.ASCII)


def next_version_name(*, session: Session, artifacts_dir: Path | None = None) -> str:
    """Monotonic names v0001, v0002, ... (never reused, even for rejected versions): one past the highest
    number among the registry's versions and, with `artifacts_dir`, the version folders in it. An
    artifact folder whose registry row was never written (a crash between the two) is skipped, not
    collided with."""
    names = list(session.execute(select(col(AdapterVersion.version))).scalars())
    if artifacts_dir is not None and artifacts_dir.is_dir():
        names += [p.name for p in artifacts_dir.iterdir()]
    numbers = [int(m.group(1)) for m in map(_NUMBERED.match, names) if m is not None]
    return f"v{max(numbers, default=0) + 1:04d}"


def add_version(*, session: Session, version: AdapterVersion) -> AdapterVersion:
    session.add(version)
    session.flush()
    return version


def get_version(*, session: Session, version: str) -> AdapterVersion:
    row = session.execute(select(AdapterVersion).where(col(AdapterVersion.version) == version)).scalar_one_or_none()
    if row is None:
        raise VersionNotFound(f"no adapter version {version!r}")
    return row


def list_versions(*, session: Session, status: str | None = None) -> list[AdapterVersion]:
    q = select(AdapterVersion).order_by(col(AdapterVersion.id))
    if status is not None:
        q = q.where(col(AdapterVersion.status) == status)
    return list(session.execute(q).scalars().all())


# --- aliases -------------------------------------------------------------------------------------
def get_alias(*, session: Session, name: str) -> str | None:
    row = session.get(RegistryAlias, name)
    return row.version if row else None


def champion(*, session: Session) -> str:
    """The version scorers should serve (`base` before any promotion)."""
    return get_alias(session=session, name=CHAMPION) or BASE


def _lock_champion(session: Session, expected: str | None) -> str:
    """Lock the champion row (created at `base` if missing) and return the champion; raise ChampionChanged
    if it is not `expected` (when given)."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(RegistryAlias).values(name=CHAMPION, version=BASE, updated_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["name"]))
    row = session.execute(select(RegistryAlias).where(col(RegistryAlias.name) == CHAMPION)
                          .with_for_update()).scalar_one()
    session.refresh(row)  # the identity map may hold a copy read before the lock
    if expected is not None and row.version != expected:
        raise ChampionChanged(f"the champion is {row.version}, not {expected} as expected; nothing changed")
    return row.version


def _set_alias(session: Session, name: str, version: str | None) -> None:
    row = session.get(RegistryAlias, name)
    if version is None:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = RegistryAlias(name=name, version=version, updated_at=utcnow())
    row.version = version
    row.updated_at = utcnow()
    session.add(row)


def _set_status(session: Session, version: str, status: str) -> None:
    if version != BASE:
        row = get_version(session=session, version=version)
        row.status = status
        session.add(row)


def promote(*, session: Session, version: str, actor: str, reason: str | None = None,
            action: str = "promote", expected: str | None = None) -> AuditLog:
    """Make `version` the champion; the old champion becomes `previous`.

    With `expected`, only if the champion is still `expected` (else ChampionChanged, nothing written).
    """
    old = _lock_champion(session, expected)
    if version != BASE:
        get_version(session=session, version=version)
    if old == version:
        raise InvalidTransition(f"{version} is already the champion")
    _set_status(session, old, "retired")
    _set_status(session, version, "champion")
    _set_alias(session, PREVIOUS, old)
    _set_alias(session, CHAMPION, version)
    return audit(session=session, actor=actor, action=action, from_version=old, to_version=version,
                 reason=reason)


def rollback(*, session: Session, actor: str, reason: str | None = None, expected: str | None = None,
             to: str | None = None) -> AuditLog:
    """Go back to the previous champion; `previous` then points at the one before it in history.

    With `expected`, only if the champion is still `expected`; with `to`, only if the previous champion is
    still `to` (the target the caller checked): else ChampionChanged, nothing written.
    """
    current = _lock_champion(session, expected)
    target = get_alias(session=session, name=PREVIOUS)
    if target is None:
        raise InvalidTransition("there is no previous champion to roll back to")
    if to is not None and target != to:
        raise ChampionChanged(f"the previous champion changed to {target} (expected {to}): try again")
    _set_status(session, current, "retired")
    _set_status(session, target, "champion")
    _set_alias(session, CHAMPION, target)
    _set_alias(session, PREVIOUS, _champion_before(session, target))
    return audit(session=session, actor=actor, action="rollback", from_version=current, to_version=target,
                 reason=reason)


def _champion_before(session: Session, version: str) -> str | None:
    """Who was champion when `version` last became champion, from the audit history."""
    q = (
        select(AuditLog)
        .where(col(AuditLog.to_version) == version, col(AuditLog.action).in_(["promote", "auto_promote"]))
        .order_by(col(AuditLog.id).desc())
        .limit(1)
    )
    row = session.execute(q).scalar_one_or_none()
    return row.from_version if row else None


# --- audit ---------------------------------------------------------------------------------------
def audit(*, session: Session, actor: str, action: str, from_version: str | None = None,
          to_version: str | None = None, reason: str | None = None,
          details: dict[str, Any] | None = None) -> AuditLog:
    row = AuditLog(ts=utcnow(), actor=actor, action=action, from_version=from_version,
                   to_version=to_version, reason=reason, details=details or {})
    session.add(row)
    session.flush()
    return row


def last_champion_change(*, session: Session) -> datetime | None:
    """When the champion alias last moved (promotion or rollback)."""
    q = select(func.max(col(AuditLog.ts))).where(col(AuditLog.action).in_(["promote", "auto_promote", "rollback"]))
    return as_utc(session.execute(q).scalar_one())


def audit_log(*, session: Session, limit: int = 50) -> list[AuditLog]:
    q = select(AuditLog).order_by(col(AuditLog.id).desc()).limit(limit)
    return list(session.execute(q).scalars().all())


# --- training runs -------------------------------------------------------------------------------
def start_run(*, session: Session, trigger: str, status: str = "running", reason: str | None = None) -> TrainingRun:
    run = TrainingRun(trigger=trigger, status=status, started_at=utcnow(), reason=reason)
    session.add(run)
    session.flush()
    return run


def finish_run(*, session: Session, run_id: int, status: str, **fields: Any) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise VersionNotFound(f"no training run {run_id}")
    run.status = status
    run.finished_at = utcnow()
    for k, v in fields.items():
        setattr(run, k, v)
    session.add(run)
    return run


def recent_runs(*, session: Session, limit: int = 10, statuses: Sequence[str] | None = None) -> list[TrainingRun]:
    q = select(TrainingRun).order_by(col(TrainingRun.id).desc()).limit(limit)
    if statuses:
        q = q.where(col(TrainingRun.status).in_(list(statuses)))
    return list(session.execute(q).scalars().all())


def last_data_cutoff(*, session: Session) -> datetime | None:
    """Newest event time any finished (non-skipped) run trained on."""
    q = select(func.max(col(TrainingRun.data_cutoff))).where(col(TrainingRun.status).in_(["succeeded", "failed"]))
    return session.execute(q).scalar_one()


# --- drift ---------------------------------------------------------------------------------------
def add_drift_report(*, session: Session, report: DriftReport) -> DriftReport:
    session.add(report)
    session.flush()
    return report


def recent_drift(*, session: Session, limit: int = 10) -> list[DriftReport]:
    q = select(DriftReport).order_by(col(DriftReport.id).desc()).limit(limit)
    return list(session.execute(q).scalars().all())


# --- paged history (the history API and the console) -------------------------------------------
# Keyset paging: newest first, `before` is the id of the last row of the previous page. Rows are
# append-only with increasing ids, so a page never repeats or skips a row when new rows arrive between
# two requests (an offset would shift by the rows added since).
def runs_page(*, session: Session, limit: int, before: int | None = None, status: str | None = None,
              trigger: str | None = None) -> list[TrainingRun]:
    """Up to `limit` training runs older than id `before`, newest first, optionally of one status/trigger."""
    q = select(TrainingRun).order_by(col(TrainingRun.id).desc()).limit(limit)
    if before is not None:
        q = q.where(col(TrainingRun.id) < before)
    if status is not None:
        q = q.where(col(TrainingRun.status) == status)
    if trigger is not None:
        q = q.where(col(TrainingRun.trigger) == trigger)
    return list(session.execute(q).scalars().all())


def get_run(*, session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise VersionNotFound(f"no training run {run_id}")
    return run


def drift_page(*, session: Session, limit: int, before: int | None = None,
               since: datetime | None = None) -> list[DriftReport]:
    """Up to `limit` drift reports older than id `before` and created at or after `since`, newest first."""
    q = select(DriftReport).order_by(col(DriftReport.id).desc()).limit(limit)
    if before is not None:
        q = q.where(col(DriftReport.id) < before)
    if since is not None:
        q = q.where(col(DriftReport.created_at) >= since)
    return list(session.execute(q).scalars().all())


def runs_started_since(*, session: Session, since: datetime, trigger: str | None = None) -> list[TrainingRun]:
    """Training runs started at or after `since`, oldest first (to link drift reports to their retrains)."""
    q = select(TrainingRun).where(col(TrainingRun.started_at) >= since).order_by(col(TrainingRun.id))
    if trigger is not None:
        q = q.where(col(TrainingRun.trigger) == trigger)
    return list(session.execute(q).scalars().all())


def fired_drift_after(*, session: Session, after: datetime) -> datetime | None:
    """When the first drift report after `after` fired (None: none has)."""
    q = select(func.min(col(DriftReport.created_at))).where(
        col(DriftReport.created_at) > after, col(DriftReport.fired).is_(True))
    return session.execute(q).scalar_one()


def audit_page(*, session: Session, limit: int, before: int | None = None, version: str | None = None,
               action: str | None = None) -> list[AuditLog]:
    """Up to `limit` audit rows older than id `before`, newest first; `version`: rows naming it (from or to)."""
    q = select(AuditLog).order_by(col(AuditLog.id).desc()).limit(limit)
    if before is not None:
        q = q.where(col(AuditLog.id) < before)
    if version is not None:
        q = q.where((col(AuditLog.from_version) == version) | (col(AuditLog.to_version) == version))
    if action is not None:
        q = q.where(col(AuditLog.action) == action)
    return list(session.execute(q).scalars().all())
