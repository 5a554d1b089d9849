"""Liveness, readiness and Prometheus metrics (no auth: bind the API to a private address)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from daemon.metrics import CONTENT_TYPE
from daemon.serving.api.deps import ApiContext, get_ctx
from daemon.serving.api.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="The model is loaded and serving", responses={503: {"description": "not ready"}})
def readyz(ctx: ApiContext = Depends(get_ctx)) -> Response:
    if not ctx.scorer.ready:
        return JSONResponse(status_code=503, content=error_body("not_ready", "the model is not loaded or stopping"))
    control = ctx.control_state() if ctx.control_state else "off"
    return JSONResponse({"status": "ready", "adapter_version": ctx.scorer.version, "control": control})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(ctx: ApiContext = Depends(get_ctx)) -> Response:
    return Response(content=ctx.metrics.render(), media_type=CONTENT_TYPE)
