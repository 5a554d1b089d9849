"""`GET /v1/ingest/stats`: what ingestion stored (from the database) and the ingest loop's counters.

No token needed, like `/metrics`: these are counts, the same numbers `/metrics` exports, with no names or
texts in them (bind the API to a private address). The stored-event rate comes from the database, so a
serve-only replica shows it too; lag, duplicates and dead letters are counters of the ingest loop of the
process that answers (zero in a process without the ingest role).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from daemon.serving.api.deps import ApiContext, get_ctx
from daemon.serving.api.schemas import IngestRate, IngestStatsOut, IngestStored, QueryTime, RateBucket
from storage import events_repo
from storage.db import session_scope
from storage.models import CatalogItem, as_utc

router = APIRouter(prefix="/v1/ingest", tags=["ingestion"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _window(until: datetime | None, since: datetime | None, bucket_s: int, limit: int) -> tuple[datetime, datetime]:
    """[start, end) aligned to `bucket_s`, at most `limit` buckets, ending at `until` (default: now)."""
    end_s = (until or datetime.now(UTC)).timestamp()
    end_s = (int(end_s) // bucket_s + (1 if end_s % bucket_s else 0)) * bucket_s
    start_s = end_s - limit * bucket_s
    if since is not None:
        start_s = max(start_s, int(since.timestamp()) // bucket_s * bucket_s)
    return datetime.fromtimestamp(start_s, UTC), datetime.fromtimestamp(end_s, UTC)


def _stats(ctx: ApiContext, since: datetime | None, until: datetime | None, bucket_s: int,
           limit: int) -> IngestStatsOut:
    start, end = _window(until, since, bucket_s, limit)
    with session_scope(ctx.engine) as s:
        stored = IngestStored(
            feedback_events=events_repo.count_feedback(session=s),
            labelled_events=events_repo.count_feedback(session=s, labelled_only=True),
            catalog_items=int(s.execute(select(func.count()).select_from(CatalogItem)).scalar_one()),
            latest_ingested_at=as_utc(events_repo.latest_ingested_at(session=s)),
        )
        counts = events_repo.ingest_counts(session=s, since=start, until=end, bucket_s=bucket_s)
    first = int(start.timestamp())
    buckets = [RateBucket(start=datetime.fromtimestamp(t, UTC), events=counts.get(t, 0),
                          events_per_s=counts.get(t, 0) / bucket_s)
               for t in range(first, int(end.timestamp()), bucket_s)]
    older = since is None or start > since
    rate = IngestRate(bucket_s=bucket_s, since=start, until=end, buckets=buckets, next_until=start if older else None)
    process = _jsonable(dict(ctx.ingest_stats())) if ctx.ingest_stats is not None else None
    return IngestStatsOut(process=process, stored=stored, rate=rate)


@router.get("/stats", response_model=IngestStatsOut,
            summary="Ingestion: events stored per time bucket, totals, and the ingest loop's counters")
async def ingest_stats(
    bucket_s: int = Query(60, ge=1, le=86400, description="Width of one rate bucket, in seconds."),
    limit: int = Query(60, ge=1, le=1440, description="Most buckets in one window (the page size)."),
    until: QueryTime | None = Query(None, description="End of the window (default now); a page's `next_until`."),
    since: QueryTime | None = Query(None, description="Start no earlier than this (ISO 8601)."),
    ctx: ApiContext = Depends(get_ctx),
) -> IngestStatsOut:
    return await run_in_threadpool(_stats, ctx, since, until, bucket_s, limit)
