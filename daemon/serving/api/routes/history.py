"""History for operators and the console: training runs with their curves, drift reports, the audit log.

All three need the operator token, like `/v1/adapters` and `/v1/status`: they name operators and their
reasons, and show how the model behaves on the shop's traffic. Paging is by keyset cursor (`before` = a
page's `next_before`), see `daemon.serving.api.schemas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from daemon.serving.api.deps import ApiContext, get_ctx, require_operator
from daemon.serving.api.schemas import (
    AuditOut,
    AuditPage,
    CurvePoint,
    DriftOut,
    DriftPage,
    DriftThresholds,
    GateOut,
    PropensityOut,
    QueryTime,
    RunDetailOut,
    RunOut,
    RunsPage,
)
from daemon.settings import DriftSettings
from daemon.status import holdout_ndcg
from storage import registry
from storage.db import session_scope
from storage.models import DriftReport, TrainingRun, as_utc

router = APIRouter(prefix="/v1", tags=["history"], dependencies=[Depends(require_operator)])

Limit = Query(50, ge=1, le=500, description="Most rows in one page.")
ID_MAX = 2**63 - 1  # the databases' BIGINT: a larger id is a 422, not an overflow (500)
Before = Query(None, ge=1, le=ID_MAX, description="Cursor: the `next_before` of the previous page.")
RETRAIN_PREFIX = "retrain requested: "


def _next(rows: Sequence[Any], limit: int) -> int | None:
    return int(rows[-1].id) if len(rows) == limit else None


# --- runs ------------------------------------------------------------------------------------------
def run_out(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.id, "trigger": run.trigger, "status": run.status, "started_at": as_utc(run.started_at),
        "finished_at": as_utc(run.finished_at), "candidate_version": run.candidate_version, "device": run.device,
        "quantization": run.quantization, "n_train": run.n_train, "n_holdout": run.n_holdout,
        "n_regression": run.n_regression, "n_replay": run.n_replay, "steps": run.steps, "best_step": run.best_step,
        "early_stopped": run.early_stopped, "seconds": run.seconds, "examples_per_s": run.examples_per_s,
        "holdout_ndcg10": holdout_ndcg(run.metrics or {}), "reason": run.reason, "error": run.error,
        "gate": GateOut.model_validate(run.gate) if run.gate else None,
    }


def run_detail(run: TrainingRun) -> RunDetailOut:
    metrics = dict(run.metrics or {})
    curve = [CurvePoint.model_validate(p) for p in metrics.pop("history", None) or [] if "step" in p]
    best = next((p for p in curve if p.step == run.best_step), None)
    raw_propensity = metrics.pop("propensity", None)
    propensity = PropensityOut.model_validate(raw_propensity) if isinstance(raw_propensity, dict) else None
    return RunDetailOut(**run_out(run), curve=curve, best=best, metrics=metrics, propensity=propensity)


@router.get("/runs", response_model=RunsPage, summary="Training runs, newest first (paged)")
def list_runs(limit: int = Limit, before: int | None = Before,
              status: str | None = Query(None, description="running, succeeded, failed, cancelled or skipped."),
              trigger: str | None = Query(None, description="schedule, drift or manual."),
              ctx: ApiContext = Depends(get_ctx)) -> RunsPage:
    with session_scope(ctx.engine) as s:
        rows = registry.runs_page(session=s, limit=limit, before=before, status=status, trigger=trigger)
        items = [RunOut(**run_out(r)) for r in rows]
    return RunsPage(items=items, next_before=_next(rows, limit))


@router.get("/runs/{run_id}", response_model=RunDetailOut,
            summary="One training run with its training curve (holdout NDCG@10 per evaluation, best step)")
def show_run(run_id: int = Path(ge=1, le=ID_MAX), ctx: ApiContext = Depends(get_ctx)) -> RunDetailOut:
    with session_scope(ctx.engine) as s:
        return run_detail(registry.get_run(session=s, run_id=run_id))


# --- drift -----------------------------------------------------------------------------------------
def thresholds(d: DriftSettings) -> DriftThresholds:
    return DriftThresholds(score_psi=d.psi_threshold, term_js=d.term_js_threshold,
                           unseen_item_share=d.unseen_threshold, unseen_term_share=d.unseen_threshold,
                           ndcg10_drop=d.ndcg_drop)


def retrain_answer(reasons: Sequence[str]) -> str | None:
    """The coordinator's answer that `daemon.training.drift.drift_job` appended to a fired report."""
    answers = [r.removeprefix(RETRAIN_PREFIX) for r in reasons if r.startswith(RETRAIN_PREFIX)]
    return answers[-1] if answers else None


def triggered_runs(session: Session, reports: Sequence[DriftReport]) -> dict[int, list[int]]:
    """Report id -> ids of the drift retrains it started.

    A report names its run when `triggered_run_id` is set. Otherwise a drift-triggered run belongs to the
    latest fired report before it whose retrain request was started or queued, up to the next fired report.
    """
    out: dict[int, list[int]] = {}
    asked = sorted((r for r in reports if r.fired and retrain_answer(r.reasons) in ("started", "queued")),
                   key=lambda r: r.created_at)
    for r in reports:
        if r.triggered_run_id is not None and r.id is not None:
            out[r.id] = [r.triggered_run_id]
    if not asked:
        return out
    end = registry.fired_drift_after(session=session, after=asked[-1].created_at)
    for run in registry.runs_started_since(session=session, since=asked[0].created_at, trigger="drift"):
        if end is not None and run.started_at >= end:
            break
        owner = [r for r in asked if r.created_at <= run.started_at]
        if owner and owner[-1].id is not None and owner[-1].triggered_run_id is None and run.id is not None:
            out.setdefault(owner[-1].id, []).append(run.id)
    return out


def drift_out(report: DriftReport, runs: list[int]) -> DriftOut:
    drop = (report.reference_ndcg - report.recent_ndcg
            if report.reference_ndcg is not None and report.recent_ndcg is not None else None)
    return DriftOut(
        id=report.id or 0, created_at=as_utc(report.created_at),
        champion_version=report.champion_version, n_reference=report.n_reference, n_recent=report.n_recent,
        score_psi=report.score_psi, term_js=report.term_js, unseen_item_share=report.unseen_item_share,
        unseen_term_share=report.unseen_term_share, recent_ndcg=report.recent_ndcg, recent_auc=report.recent_auc,
        reference_ndcg=report.reference_ndcg, ndcg10_drop=drop, fired=report.fired, reasons=list(report.reasons),
        retrain_request=retrain_answer(report.reasons), triggered_runs=runs)


def _drift_page(ctx: ApiContext, since: datetime | None, limit: int, before: int | None) -> DriftPage:
    with session_scope(ctx.engine) as s:
        rows = registry.drift_page(session=s, limit=limit, before=before,
                                   since=since)
        links = triggered_runs(s, rows)
        items = [drift_out(r, links.get(r.id or 0, [])) for r in rows]
    return DriftPage(items=items, next_before=_next(rows, limit), thresholds=thresholds(ctx.settings.drift))


@router.get("/drift", response_model=DriftPage,
            summary="Drift reports, newest first (paged): each statistic, the thresholds, the retrains triggered")
async def list_drift(
    since: QueryTime | None = Query(None, description="Only reports created at or after this time (ISO 8601)."),
    limit: int = Query(100, ge=1, le=1000, description="Most reports in one page."),
    before: int | None = Before, ctx: ApiContext = Depends(get_ctx),
) -> DriftPage:
    return await run_in_threadpool(_drift_page, ctx, since, limit, before)


# --- audit -----------------------------------------------------------------------------------------
@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first (paged)")
def list_audit(limit: int = Limit, before: int | None = Before,
               version: str | None = Query(None, description="Only rows that name this version."),
               action: str | None = Query(None, description="promote, rollback, auto_promote or reject."),
               ctx: ApiContext = Depends(get_ctx)) -> AuditPage:
    with session_scope(ctx.engine) as s:
        rows = registry.audit_page(session=s, limit=limit, before=before, version=version, action=action)
        items = [AuditOut.model_validate(r, from_attributes=True) for r in rows]
    for item in items:
        item.ts = as_utc(item.ts)
    return AuditPage(items=items, next_before=_next(rows, limit))
