"""`POST /v1/score`: rank items for a query with the served adapter version.

It reads no database when every item has its `text`; items without one come from the catalog cache
(`daemon.serving.catalog`), which keeps answering for known items while the database is away."""

# No `from __future__ import annotations`: FastAPI must resolve the request models defined inside
# `build_router` from real annotations, not from strings it cannot look up.

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.concurrency import run_in_threadpool

from daemon.serving.api.deps import ApiContext, get_ctx
from daemon.serving.api.errors import UnknownItems
from daemon.serving.api.schemas import ScoredItem, ScoreResponse, Timing
from daemon.serving.explore import Explorer
from daemon.serving.scorer import ScoreTimeout
from daemon.settings import Settings


async def _texts(ctx: ApiContext, items: list[tuple[str, str | None]]) -> dict[str, str]:
    """Each item's text: the request's own, else the catalog cache's (UnknownItems for the rest)."""
    texts = {item_id: text for item_id, text in items if text is not None}
    missing = [item_id for item_id, text in items if text is None]
    if missing:
        assert ctx.catalog is not None
        known = await run_in_threadpool(ctx.catalog.lookup, missing)
        unknown = [m for m in missing if m not in known]
        if unknown:
            raise UnknownItems(f"{len(unknown)} item(s) have no text and are not in the catalog: {unknown[:5]}")
        texts.update(known)
    return texts


def build_router(settings: Settings) -> APIRouter:
    """The score route, with the request limits of `settings` in its schema (and so in the OpenAPI)."""
    max_text = settings.api.max_text_chars
    Text = Annotated[str, StringConstraints(max_length=max_text)]

    class ScoreItemIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        item_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
        text: Text | None = Field(None, description="Item text; optional when the catalog knows the item.")

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        query: Text
        items: list[ScoreItemIn] = Field(min_length=1, max_length=settings.api.max_items)

        @field_validator("query")
        @classmethod
        def _query_not_blank(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("query must not be empty")
            return v

        @field_validator("items")
        @classmethod
        def _unique_ids(cls, v: list[ScoreItemIn]) -> list[ScoreItemIn]:
            seen: set[str] = set()
            dup: set[str] = set()
            for item in v:
                (dup if item.item_id in seen else seen).add(item.item_id)
            if dup:
                raise ValueError(f"duplicate item_id {sorted(dup)[:5]}")
            return v

    router = APIRouter(tags=["scoring"])
    explorer = Explorer.from_settings(settings.scorer)  # one per app, so one seeded RNG per process

    @router.post("/v1/score", response_model=ScoreResponse, summary="Score and sort items for a query")
    async def score(body: ScoreRequest, ctx: ApiContext = Depends(get_ctx)) -> ScoreResponse:
        t0 = time.perf_counter()
        texts = await _texts(ctx, [(i.item_id, i.text) for i in body.items])
        ids = [i.item_id for i in body.items]
        future = ctx.scorer.submit([(body.query, texts[i]) for i in ids])
        timeout = ctx.settings.scorer.request_timeout_s
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            raise ScoreTimeout(f"no scores within {timeout:.0f}s (scorer overloaded?)") from None
        order = sorted(range(len(ids)), key=lambda k: -float(result.scores[k]))
        items = [ScoredItem(item_id=ids[k], score=float(result.scores[k]), rank=r + 1) for r, k in enumerate(order)]
        timing = Timing(total_ms=(time.perf_counter() - t0) * 1e3, queue_ms=result.queue_s * 1e3,
                        model_ms=result.model_s * 1e3, round_pairs=result.round_pairs)
        shown = explorer.perturb(len(items))
        if shown is None:
            return ScoreResponse(adapter_version=result.version, items=items, timing=timing)
        ctx.metrics.explored.labels(mode=explorer.mode).inc()
        return ScoreResponse(adapter_version=result.version, items=[items[r] for r in shown], timing=timing,
                             explore=True, explore_mode=explorer.mode)

    return router
