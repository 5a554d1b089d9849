"""The status document behind `ranktune status` and `GET /v1/status`: one builder for both."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage import events_repo, registry
from storage.db import session_scope
from storage.models import AdapterVersion, CatalogItem, DriftReport, TrainingRun


def version_dict(row: AdapterVersion) -> dict[str, Any]:
    return {"version": row.version, "status": row.status, "parent_version": row.parent_version,
            "created_at": row.created_at.isoformat() if row.created_at else None, "quantization": row.quantization,
            "base_model": row.base_model, "checksum": row.checksum, "training_run_id": row.training_run_id,
            "metrics": row.metrics, "gate": row.gate}


def holdout_ndcg(metrics: Mapping[str, Any]) -> float | None:
    """The candidate's holdout NDCG@10 as the training cycle records it."""
    value = ((metrics.get("candidate") or {}).get("holdout") or {}).get("ndcg10")
    return float(value) if isinstance(value, int | float) else None


def run_dict(r: TrainingRun) -> dict[str, Any]:
    return {"id": r.id, "trigger": r.trigger, "status": r.status, "started_at": r.started_at,
            "finished_at": r.finished_at, "candidate_version": r.candidate_version, "seconds": r.seconds,
            "n_train": r.n_train, "metrics": r.metrics, "gate_passed": (r.gate or {}).get("passed"),
            "reason": r.reason, "error": r.error}


def drift_dict(d: DriftReport) -> dict[str, Any]:
    return {"created_at": d.created_at, "champion_version": d.champion_version, "fired": d.fired,
            "reasons": d.reasons, "score_psi": d.score_psi, "term_js": d.term_js,
            "unseen_item_share": d.unseen_item_share, "unseen_term_share": d.unseen_term_share,
            "recent_ndcg": d.recent_ndcg, "reference_ndcg": d.reference_ndcg}


def learning_dict(run: TrainingRun | None) -> dict[str, Any] | None:
    """What a run learned about position bias and what its gate could tell apart: the propensity curve it
    estimated (`metrics["propensity"]`, see `daemon.training.cycle`) and the gate's smallest detectable gain."""
    if run is None:
        return None
    gate = run.gate or {}
    raw = (run.metrics or {}).get("propensity")
    curve = None
    if isinstance(raw, dict):
        curve = {"method": raw.get("method"), "n_pages": raw.get("n_pages"), "n_clicks": raw.get("n_clicks"),
                 "used": raw.get("used"), "estimated": list(raw.get("estimated") or raw.get("values") or [])}
    return {"run_id": run.id, "candidate_version": run.candidate_version, "compared_with": gate.get("compared_with"),
            "finished_at": run.finished_at, "propensity": curve, "gate_passed": gate.get("passed"),
            "min_detectable_gain": gate.get("min_detectable_gain"), "ndcg_gain": gate.get("ndcg_gain")}


def position_bias(session: Session, champion: str) -> dict[str, Any]:
    """The position-bias curve and the gate's resolution of the champion's own training run (none for
    `base`) and of the latest succeeded run (the newest estimate, on the traffic the champion ordered)."""
    champion_run = None
    if champion != registry.BASE:
        q = select(AdapterVersion).where(col(AdapterVersion.version) == champion)
        row = session.execute(q).scalar_one_or_none()
        if row is not None and row.training_run_id is not None:
            champion_run = session.get(TrainingRun, row.training_run_id)
    latest = registry.recent_runs(session=session, limit=1, statuses=["succeeded"])
    return {"champion_run": learning_dict(champion_run), "latest_run": learning_dict(latest[0] if latest else None)}


def status_document(engine: Engine, *, runs: int = 5, schedule: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Champion, candidates, recent runs, the latest drift report, the position-bias curve and the gate's
    smallest detectable gain (`position_bias`), stored-event counters and schedule.

    `schedule` (next run times, the training in progress) is known only inside a process that runs the
    scheduler role; without it the document says `{"known": false}`.
    """
    with session_scope(engine) as s:
        drift = registry.recent_drift(session=s, limit=1)
        champion = registry.champion(session=s)
        return {
            "champion": champion,
            "previous": registry.get_alias(session=s, name=registry.PREVIOUS),
            "candidates": [version_dict(v) for v in registry.list_versions(session=s, status="candidate")],
            "training_runs": [run_dict(r) for r in registry.recent_runs(session=s, limit=runs)],
            "drift": drift_dict(drift[0]) if drift else None,
            "position_bias": position_bias(s, champion),
            "ingestion": {
                "feedback_events": events_repo.count_feedback(session=s),
                "labelled_events": events_repo.count_feedback(session=s, labelled_only=True),
                "catalog_items": int(s.execute(select(func.count()).select_from(CatalogItem)).scalar_one()),
                "latest_ingested_at": events_repo.latest_ingested_at(session=s),
            },
            "schedule": dict(schedule) if schedule is not None else {"known": False},
        }
