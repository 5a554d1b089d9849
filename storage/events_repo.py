"""Writes and reads of feedback events and catalog items. Keyword-only, session passed in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from storage.models import CatalogItem, FeedbackEvent


@dataclass(frozen=True)
class WriteResult:
    stored: int
    duplicates: int


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def insert_feedback(*, session: Session, rows: Sequence[dict[str, Any]]) -> WriteResult:
    """Insert feedback rows; rows whose `event_id` is already stored are skipped (idempotent)."""
    unique = list({r["event_id"]: r for r in rows}.values())
    if not unique:
        return WriteResult(0, len(rows))
    # One statement, the rows as its parameters: SQLAlchemy batches them ("insertmanyvalues") without
    # compiling a new statement per batch, which `.values(rows)` would (about 20x slower per row).
    stmt = (
        _insert(session, FeedbackEvent)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(col(FeedbackEvent.event_id))
    )
    stored = len(session.connection().execute(stmt, unique).all())
    return WriteResult(stored, len(rows) - stored)


def upsert_catalog(*, session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Upsert catalog items; an older `ts` never replaces a newer one. Returns rows written."""
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = latest.get(r["item_id"])
        if cur is None or r["ts"] >= cur["ts"]:
            latest[r["item_id"]] = r
    if not latest:
        return 0
    stmt = _insert(session, CatalogItem)
    cols = ("title", "description", "category", "brand", "attributes", "ts", "updated_at")
    stmt = stmt.on_conflict_do_update(
        index_elements=["item_id"],
        set_={c: stmt.excluded[c] for c in cols},
        where=stmt.excluded.ts >= col(CatalogItem.ts),
    ).returning(col(CatalogItem.item_id))
    return len(session.connection().execute(stmt, list(latest.values())).all())


def count_feedback(*, session: Session, since: datetime | None = None, labelled_only: bool = False) -> int:
    """Events stored after `since` (by ingestion time); `labelled_only` skips bare impressions."""
    q = select(func.count()).select_from(FeedbackEvent)
    if since is not None:
        q = q.where(col(FeedbackEvent.ingested_at) > since)
    if labelled_only:
        q = q.where(col(FeedbackEvent.action) != "impression")
    return int(session.execute(q).scalar_one())


def latest_ingested_at(*, session: Session) -> datetime | None:
    return session.execute(select(func.max(col(FeedbackEvent.ingested_at)))).scalar_one()


def recent_feedback(
    *, session: Session, limit: int, until: datetime | None = None, since: datetime | None = None
) -> list[FeedbackEvent]:
    """The newest `limit` events by ingestion time, oldest first."""
    q = select(FeedbackEvent)
    if until is not None:
        q = q.where(col(FeedbackEvent.ingested_at) <= until)
    if since is not None:
        q = q.where(col(FeedbackEvent.ingested_at) > since)
    q = q.order_by(col(FeedbackEvent.ingested_at).desc(), col(FeedbackEvent.event_id).desc()).limit(limit)
    return list(reversed(session.execute(q).scalars().all()))


def catalog_items(*, session: Session, item_ids: Sequence[str] | None = None) -> dict[str, CatalogItem]:
    q = select(CatalogItem)
    if item_ids is not None:
        q = q.where(col(CatalogItem.item_id).in_(list(item_ids)))
    return {c.item_id: c for c in session.execute(q).scalars().all()}
