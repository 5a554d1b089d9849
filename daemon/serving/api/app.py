"""`create_app`: the FastAPI application over explicitly given collaborators (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from daemon.metrics import Metrics
from daemon.serving.api.deps import ApiContext, BodySizeLimit, RequestMetrics
from daemon.serving.api.errors import install_error_handlers
from daemon.serving.api.routes import adapters, health, history, ingest, score, status
from daemon.serving.api.routes.console import mount_console
from daemon.serving.catalog import CatalogTexts
from daemon.serving.control import Reconciler
from daemon.serving.scorer import Scorer
from daemon.settings import Settings
from daemon.training.promotion import Publish


def create_app(
    *,
    settings: Settings,
    engine: Engine,
    scorer: Scorer,
    metrics: Metrics,
    reconciler: Reconciler | None = None,
    publish: Publish | None = None,
    ingest_stats: Callable[[], Mapping[str, Any]] | None = None,
    control_state: Callable[[], str] | None = None,
    schedule: Callable[[], Mapping[str, Any]] | None = None,
) -> FastAPI:
    """The ranktune HTTP API (OpenAPI at `/openapi.json`, docs at `/docs`).

    `reconciler` lets operator actions swap this replica at once; `publish` sends control notices to the
    others; `ingest_stats` (e.g. `IngestStats.snapshot`) adds the ingestion counters to `/metrics`;
    `control_state` (e.g. `ControlListener.state`) is reported by `/readyz`.
    """
    app = FastAPI(title="ranktune", version="0.1.0",
                  description="Live ranking scores from the champion adapter, and operator actions.")
    catalog = CatalogTexts(engine, max_items=settings.api.catalog_cache_items, ttl_s=settings.api.catalog_cache_ttl_s)
    app.state.ctx = ApiContext(settings=settings, engine=engine, scorer=scorer, metrics=metrics,
                               reconciler=reconciler, publish=publish, ingest_stats=ingest_stats,
                               control_state=control_state, schedule=schedule, catalog=catalog)
    if ingest_stats is not None:
        metrics.add_ingest_source(ingest_stats)
    install_error_handlers(app)
    app.include_router(score.build_router(settings))
    app.include_router(adapters.router)
    app.include_router(status.router)
    app.include_router(health.router)
    app.include_router(history.router)
    app.include_router(ingest.router)
    mount_console(app)
    # Starlette runs the last-added middleware first: metrics see the 413s of the size limit too.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, path="/v1/score")
    return app
