"""`GET /v1/status`: what `ranktune status` shows, plus the schedule when this process runs it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from daemon.serving.api.deps import ApiContext, get_ctx, require_operator
from daemon.status import status_document

router = APIRouter(prefix="/v1", tags=["operator"], dependencies=[Depends(require_operator)])


@router.get("/status", summary="Champion, candidates, recent training runs, drift, ingestion and schedule")
async def status(runs: int = 5, ctx: ApiContext = Depends(get_ctx)) -> dict[str, Any]:
    schedule = ctx.schedule() if ctx.schedule is not None else None
    doc = await run_in_threadpool(status_document, ctx.engine, runs=max(1, min(runs, 100)), schedule=schedule)
    doc["served_version"] = ctx.scorer.version
    return doc
