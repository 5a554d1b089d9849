"""`ranktune train --once`: run one training cycle now (in a child process) and print the outcome."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from daemon.commands.errors import UsageError
from daemon.settings import Settings

if TYPE_CHECKING:
    from daemon.training.messages import CycleOutcome
from storage.db import ensure_schema, make_engine


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="Train a candidate adapter from stored events and gate it (--once).")
    p.add_argument("--once", action="store_true", help="Run one cycle now and exit (required).")
    p.add_argument("--json", action="store_true", help="Print the outcome as one JSON object.")
    p.add_argument("--no-promote", action="store_true",
                   help="Never promote, even when the gate passes and RANKTUNE_GATE_AUTO_PROMOTE is true.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.once:
        raise UsageError("ranktune train: needs --once: `ranktune train --once` runs one training cycle now and "
                         "exits; retraining on a schedule and on drift is the scheduler role of `ranktune run`")
    from daemon.training.trainer_process import TrainerProcess
    engine = make_engine(settings.storage.sqlalchemy_url, **settings.storage.engine_options)
    ensure_schema(engine)
    bar: tqdm[Any] | None = None

    def progress(msg: dict[str, Any]) -> None:
        nonlocal bar
        if args.json:
            return
        if bar is None and msg.get("total_steps"):
            bar = tqdm(total=int(msg["total_steps"]), desc="training", unit="step", file=sys.stderr)
        if bar is not None:
            bar.n = int(msg.get("step", bar.n))
            if msg.get("holdout_ndcg10") is not None:
                bar.set_postfix(holdout_ndcg10=f"{msg['holdout_ndcg10']:.4f}")
            bar.refresh()

    from daemon.lifecycle import install_signal_handlers

    trainer = TrainerProcess(settings, engine)
    # SIGTERM or a first Ctrl-C asks the child to stop at its next step (the run ends `cancelled`, nothing
    # kept); a second Ctrl-C stops waiting: the child is killed after the grace period and the row closed
    restore = install_signal_handlers(trainer.request_stop)
    try:
        outcome = trainer.run("manual", on_progress=progress)
    finally:
        restore()
    if bar is not None:
        bar.close()
    promoted = None
    if outcome.status == "succeeded" and not args.no_promote:
        from daemon.serving.control import ControlPublisher
        from daemon.training.promotion import auto_promote

        publisher = ControlPublisher(settings)
        try:
            promoted = auto_promote(outcome, engine=engine, auto=settings.gate.auto_promote,
                                    artifacts_dir=settings.storage.artifacts_dir, publish=publisher.publish)
        finally:
            publisher.close()
    doc = outcome_document(outcome, promoted)
    if args.json:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
    else:
        print_summary(doc)
    engine.dispose()
    return 0 if outcome.status in ("succeeded", "skipped") else 1


def outcome_document(outcome: CycleOutcome, promoted: str | None) -> dict[str, Any]:
    summary = outcome.summary.model_dump() if outcome.summary is not None else {}
    metrics = summary.get("metrics", {})
    return {
        "run_id": outcome.run_id, "status": outcome.status, "trigger": outcome.trigger,
        "candidate_version": outcome.candidate_version, "artifact_path": summary.get("artifact_path"),
        "quantization": summary.get("quantization"), "device": summary.get("device"),
        "metrics": {"candidate": metrics.get("candidate"), "compared_with": metrics.get("compared_with")},
        "gate": outcome.gate.record() if outcome.gate is not None else None, "promoted": promoted,
        "error": outcome.error,
        "training": {**{k: summary.get(k) for k in ("n_train", "n_holdout", "best_step", "steps", "early_stopped",
                                                      "seconds")},
                     "selection": metrics.get("selection")},  # what early stopping read
    }


def print_summary(doc: dict[str, Any]) -> None:
    console = Console()
    console.print(f"run {doc['run_id']} ({doc['trigger']}): [bold]{doc['status']}[/bold]"
                  + (f"  error: {doc['error']}" if doc["error"] else ""))
    cand = (doc["metrics"] or {}).get("candidate")
    champ = (doc["metrics"] or {}).get("compared_with")
    if not cand or not champ:
        return
    table = Table(title=f"candidate {doc['candidate_version']} vs {champ.get('version')}")
    for col in ("metric", "candidate", champ.get("version", "champion"), "delta"):
        table.add_column(col)
    for split in ("holdout", "regression"):
        c, b = cand.get(split) or {}, champ.get(split) or {}
        for key in ("ndcg10", "mrr", "auc", "loss"):
            if c.get(key) is None or b.get(key) is None:
                continue
            table.add_row(f"{split} {key}", f"{c[key]:.4f}", f"{b[key]:.4f}", f"{c[key] - b[key]:+.4f}")
    console.print(table)
    gate = doc.get("gate") or {}
    verdict = "PASS" if gate.get("passed") else "FAIL"
    console.print(f"gate: {verdict}  " + "; ".join(gate.get("reasons", [])))
    console.print(f"promoted: {doc['promoted'] or 'no'}   artifact: {doc['artifact_path']}")
