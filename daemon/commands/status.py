"""`ranktune status`: champion, candidates, recent training runs, drift, and stored-event counters."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import func, select

from daemon.commands.adapters import version_dict
from daemon.settings import Settings
from storage import events_repo, registry
from storage.db import ensure_schema, make_engine, session_scope
from storage.models import CatalogItem, DriftReport, TrainingRun


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="Champion, candidates, last training runs, drift and ingestion counters.")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.add_argument("--runs", type=int, default=5, help="How many recent training runs to show.")
    p.set_defaults(handler=run)


def _run_dict(r: TrainingRun) -> dict[str, Any]:
    return {"id": r.id, "trigger": r.trigger, "status": r.status, "started_at": r.started_at,
            "finished_at": r.finished_at, "candidate_version": r.candidate_version, "seconds": r.seconds,
            "n_train": r.n_train, "metrics": r.metrics, "gate_passed": (r.gate or {}).get("passed"),
            "reason": r.reason, "error": r.error}


def _drift_dict(d: DriftReport) -> dict[str, Any]:
    return {"created_at": d.created_at, "champion_version": d.champion_version, "fired": d.fired,
            "reasons": d.reasons, "score_psi": d.score_psi, "term_js": d.term_js,
            "unseen_item_share": d.unseen_item_share, "recent_ndcg": d.recent_ndcg}


def collect(settings: Settings, runs: int = 5) -> dict[str, Any]:
    """Everything `status` shows, as plain data."""
    engine = make_engine(settings.sqlalchemy_url)
    try:
        ensure_schema(engine)
        with session_scope(engine) as s:
            drift = registry.recent_drift(session=s, limit=1)
            return {
                "champion": registry.champion(session=s),
                "previous": registry.get_alias(session=s, name=registry.PREVIOUS),
                "candidates": [version_dict(v) for v in registry.list_versions(session=s, status="candidate")],
                "training_runs": [_run_dict(r) for r in registry.recent_runs(session=s, limit=runs)],
                "drift": _drift_dict(drift[0]) if drift else None,
                "ingestion": {
                    "feedback_events": events_repo.count_feedback(session=s),
                    "labelled_events": events_repo.count_feedback(session=s, labelled_only=True),
                    # a plain count; events_repo has no catalog counter
                    "catalog_items": int(s.execute(select(func.count()).select_from(CatalogItem)).scalar_one()),
                    "latest_ingested_at": events_repo.latest_ingested_at(session=s),
                },
            }
    finally:
        engine.dispose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    info = collect(settings, args.runs)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"champion: {info['champion']}   previous: {info['previous'] or '-'}")
    cands = info["candidates"]
    print(f"candidates: {', '.join(c['version'] for c in cands) if cands else 'none'}")
    print("last training runs:")
    for r in info["training_runs"] or [{}]:
        if not r:
            print("  none")
            break
        print(f"  #{r['id']} {r['trigger']:<8} {r['status']:<9} {r['started_at']}  candidate={r['candidate_version']}"
              f" gate={'-' if r['gate_passed'] is None else ('pass' if r['gate_passed'] else 'fail')}"
              f"{'  ' + (r['error'] or r['reason']) if (r['error'] or r['reason']) else ''}")
    d = info["drift"]
    print("drift: none yet" if d is None else
          f"drift: {d['created_at']} champion={d['champion_version']} fired={d['fired']} {', '.join(d['reasons'])}")
    ing = info["ingestion"]
    print(f"ingestion: {ing['feedback_events']} events ({ing['labelled_events']} labelled), "
          f"{ing['catalog_items']} catalog items, latest at {ing['latest_ingested_at'] or '-'}")
    return 0
