"""Operator endpoints: list and inspect adapter versions, promote, roll back (bearer token required)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters.errors import SwapRefused
from daemon.serving.api.deps import ApiContext, get_ctx, require_operator
from daemon.serving.api.schemas import ActionOut, AdaptersOut, AuditOut, VersionDetailOut, VersionOut
from daemon.serving.control import check_version
from daemon.training import promotion
from storage import registry
from storage.db import session_scope
from storage.models import AdapterVersion, AuditLog

router = APIRouter(prefix="/v1/adapters", tags=["operator"], dependencies=[Depends(require_operator)])


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str | None = Field(None, max_length=1000, description="Why; stored in the audit log.")
    actor: str | None = Field(None, min_length=1, max_length=100, description="Who; default api@<client address>.")


def _version_out(row: AdapterVersion) -> dict[str, Any]:
    return VersionOut.model_validate(row, from_attributes=True).model_dump()


def _audit_out(row: AuditLog) -> AuditOut:
    return AuditOut.model_validate(row, from_attributes=True)


@router.get("", response_model=AdaptersOut, summary="All adapter versions, aliases, and what this replica serves")
def list_adapters(ctx: ApiContext = Depends(get_ctx)) -> AdaptersOut:
    with session_scope(ctx.engine) as s:
        rows = registry.list_versions(session=s)
        champion = registry.champion(session=s)
        previous = registry.get_alias(session=s, name=registry.PREVIOUS)
        versions = [VersionOut(**_version_out(r)) for r in rows]
    return AdaptersOut(champion=champion, previous=previous, served=ctx.scorer.version, versions=versions)


@router.get("/{version}", response_model=VersionDetailOut, summary="One adapter version and its history")
def show_adapter(version: str, ctx: ApiContext = Depends(get_ctx)) -> VersionDetailOut:
    check_version(version)
    with session_scope(ctx.engine) as s:
        if version == registry.BASE:
            champion = registry.champion(session=s)
            info: dict[str, Any] = {"version": version, "status": "champion" if champion == version else "base"}
        else:
            info = _version_out(registry.get_version(session=s, version=version))
        history = [_audit_out(a) for a in registry.audit_page(session=s, limit=500, version=version)]
    return VersionDetailOut(**info, history=history)


def _act(ctx: ApiContext, result: promotion.ActionResult) -> ActionOut:
    local = "ok"
    if ctx.reconciler is not None:
        try:
            ctx.reconciler.sync(f"operator {result.action}", force=True)
        except SwapRefused as exc:
            local = f"refused: {exc}"
        except Exception as exc:  # the change is committed; this replica heals on its next reconcile
            local = f"failed: {exc}"
    return ActionOut(action=result.action, from_version=result.from_version, to_version=result.to_version,
                     audit_id=result.audit_id, published=result.published, publish_error=result.publish_error,
                     served=ctx.scorer.version, local_swap=local)


def _actor(request: Request, body: ActionIn | None) -> str:
    if body is not None and body.actor:
        return body.actor
    return f"api@{request.client.host if request.client else 'unknown'}"


@router.post("/{version}/promote", response_model=ActionOut, summary="Make a version the champion")
def promote(version: str, request: Request, body: ActionIn | None = Body(None),
            ctx: ApiContext = Depends(get_ctx)) -> ActionOut:
    result = promotion.promote(engine=ctx.engine, version=check_version(version), actor=_actor(request, body),
                              reason=body.reason if body else None, artifacts_dir=ctx.settings.storage.artifacts_dir,
                              publish=ctx.publish, serving=ctx.scorer.base_identity)
    return _act(ctx, result)


@router.post("/rollback", response_model=ActionOut, summary="Go back to the previous champion")
def rollback(request: Request, body: ActionIn | None = Body(None), ctx: ApiContext = Depends(get_ctx)) -> ActionOut:
    result = promotion.rollback(engine=ctx.engine, actor=_actor(request, body), reason=body.reason if body else None,
                               artifacts_dir=ctx.settings.storage.artifacts_dir, publish=ctx.publish,
                               serving=ctx.scorer.base_identity)
    return _act(ctx, result)
