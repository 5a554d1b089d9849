"""Liveness, readiness and Prometheus metrics (no auth: bind the API to a private address).

Inside an `Application` these answer exactly what the ops port answers (`daemon.ops`): the process's
`Health` is reached through the shared `Metrics`. An API built on its own (tests, benchmarks) has no
`Health`; then readiness is the scorer's alone.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from daemon.metrics import CONTENT_TYPE
from daemon.ops import probe_healthz, probe_readyz
from daemon.serving.api.deps import ApiContext, get_ctx
from daemon.serving.api.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process can recover by itself",
            responses={503: {"description": "a worker died or is stuck: the process is exiting for a restart"}})
def healthz(ctx: ApiContext = Depends(get_ctx)) -> Response:
    if ctx.metrics.health is None:
        return JSONResponse({"status": "alive"})
    status, body = probe_healthz(ctx.metrics.health)
    return JSONResponse(body, status_code=status)


@router.get("/readyz", summary="Every worker beats and the model is loaded and serving",
            responses={503: {"description": "not ready: the body names each failing worker or check"}})
def readyz(ctx: ApiContext = Depends(get_ctx)) -> Response:
    if ctx.metrics.health is not None:
        status, body = probe_readyz(ctx.metrics.health)
        return JSONResponse(body, status_code=status)
    if not ctx.scorer.ready:
        return JSONResponse(status_code=503, content=error_body("not_ready", "the model is not loaded or stopping"))
    control = ctx.control_state() if ctx.control_state else "off"
    out: dict[str, Any] = {"status": "ready", "adapter_version": ctx.scorer.version, "control": control}
    degraded = getattr(ctx.scorer, "degraded", None)
    if degraded:
        out["status"], out["degraded"] = "degraded", {"scorer": degraded}
    return JSONResponse(out)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(ctx: ApiContext = Depends(get_ctx)) -> Response:
    return Response(content=ctx.metrics.render(), media_type=CONTENT_TYPE)
