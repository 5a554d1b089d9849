"""One training cycle, run inside the training child: data from the DB -> candidate -> gate -> registry.

The cycle never touches the champion alias: it only adds a candidate version with its gate decision.
Promotion is the parent's job (automatic or by an operator), so a crash here leaves the champion as it was.
"""

from __future__ import annotations

import logging
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from adapters import artifacts, dataset, gate, propensity, training
from adapters.dataset import QueryGroup
from adapters.errors import NotEnoughData
from adapters.product_text import product_text
from adapters.propensity import PropensityCurve
from adapters.ranker import Ranker
from adapters.ranking_metrics import EvalResult, evaluate_groups
from daemon.logs import configure_logging
from daemon.settings import Settings
from daemon.training.messages import CycleOutcome, CycleSummary, GateVerdict, Progress, RunStatus, report
from storage import events_repo, registry
from storage.db import make_engine, session_scope, write_patiently
from storage.errors import DatabaseUnavailable
from storage.models import AdapterVersion, TrainingRun, utcnow

log = logging.getLogger(__name__)

# Events read per cycle: the newest ones, enough for `train_max_groups` result pages of ~10 items.
EVENTS_PER_GROUP = 12
N_POSITIONS = 10  # positions whose examination propensity is estimated (deeper ones take the last value)
REGISTRY_PATIENCE_S = 120.0  # how long a trained candidate waits for an unreachable database to register it


def load_groups(settings: Settings, engine: Engine) -> tuple[list[QueryGroup], list[QueryGroup], datetime | None]:
    """(new groups since the last run's cutoff, older groups for replay/regression, this run's cutoff: the
    newest `ingested_at` no event still to commit can fall behind, `events_repo.settled_cutoff`)."""
    with session_scope(engine) as s:
        cutoff_before = registry.last_data_cutoff(session=s)
        newest = events_repo.settled_cutoff(session=s)
        events = events_repo.recent_feedback(session=s, limit=settings.train.max_groups * EVENTS_PER_GROUP)
        catalog = events_repo.catalog_items(session=s, item_ids=sorted({e.item_id for e in events}))
    texts = {item_id: product_text(item.model_dump()) for item_id, item in catalog.items()}
    if cutoff_before is None:
        return dataset.build_groups([e.model_dump() for e in events], texts.get), [], newest
    # A result page whose events straddle the cutoff splits in two partial groups: rare, and harmless.
    new = [e.model_dump() for e in events if e.ingested_at > cutoff_before]
    old = [e.model_dump() for e in events if e.ingested_at <= cutoff_before]
    return dataset.build_groups(new, texts.get), dataset.build_groups(old, texts.get), newest


def _per_group(result: EvalResult | None) -> list[float] | None:
    return None if result is None else list(result.per_group_ndcg)


@dataclass
class _Champion:
    """The version a candidate must beat, loaded into the training ranker (`adapter` None: the base)."""

    version: str
    adapter: str | None
    state: dict[str, Any] | None
    residual_scale: float | None = None  # its weight of the zero-shot cosine (sentence-encoder bases)

    def scores(self, ranker: Ranker) -> Callable[[str, Sequence[str]], Any]:
        return lambda query, texts: ranker.score(query, texts, adapter=self.adapter)


def estimate_propensity(ranker: Ranker, groups: Sequence[QueryGroup], n_positions: int) -> PropensityCurve:
    """The examination curve of the logged pages (`adapters.propensity.estimate`): randomized pages when
    exploration marked enough of them, else intervention harvesting, else regression EM on the base's
    zero-shot score, else the 1/(k+1) prior. Stored with the run; the loss and the gate correct with it."""
    def zero_shot(g: QueryGroup) -> np.ndarray:
        return np.asarray(ranker.score(g.query, g.texts, adapter=None), dtype=np.float64)[:, None]

    return propensity.estimate(list(groups), n_positions, features=zero_shot)


def _load_champion(settings: Settings, engine: Engine, ranker: Ranker) -> tuple[_Champion, str]:
    """The champion (its weights added to `ranker`) and the name the new candidate gets."""
    with session_scope(engine) as s:
        version = registry.champion(session=s)
        row = None if version == registry.BASE else registry.get_version(session=s, version=version)
        candidate = registry.next_version_name(session=s, artifacts_dir=settings.storage.artifacts_dir)
    if row is None:
        return _Champion(version, None, None), candidate
    loaded = artifacts.load_adapter(settings.storage.artifacts_dir, version, expected_checksum=row.checksum)
    name = f"champion-{version}"
    ranker.add_adapter(name, loaded.state, loaded.peft_config)
    scale = ranker.residual_scale(name) if ranker.base.is_sentence_encoder else None
    return _Champion(version, name, loaded.state, scale), candidate


def _run_metrics(result: training.TrainResult, champion: str, champ_holdout: EvalResult,
                 champ_regression: EvalResult | None, curve: PropensityCurve, debiased: bool,
                 n_selection: int) -> dict[str, Any]:
    """What the registry keeps of a run: both sides' metrics, the training curve, the propensity curve, and
    what early stopping read (`selection`: its own slice of `n_selection` groups, or the holdout)."""
    return {
        "candidate": {"holdout": result.holdout.to_dict(),
                      "regression": result.regression.to_dict() if result.regression else None},
        "compared_with": {"version": champion, "holdout": champ_holdout.to_dict(),
                          "regression": champ_regression.to_dict() if champ_regression else None},
        "history": result.history,
        "propensity": {"estimated": list(curve.values), **curve.to_dict(), "used": debiased},
        "selection": {"on": "selection" if n_selection else "holdout", "n_groups": n_selection},
    }


def run_cycle(settings: Settings, engine: Engine, run_id: int, trigger: str, *,
              should_stop: Callable[[], bool], on_progress: Callable[[dict[str, Any]], None]) -> CycleOutcome:
    """Train, evaluate and register one candidate; the outcome is what the parent is told."""
    cfg = settings.configs()
    new, old, newest = load_groups(settings, engine)
    splits = dataset.split(new, cfg.split, previous=old)
    ranker = Ranker.load(cfg.model, cfg.lora)
    champion, version = _load_champion(settings, engine, ranker)
    curve = estimate_propensity(ranker, new + old, N_POSITIONS)
    debiased = cfg.train.debias == "ips"
    # the champion is judged exactly as the candidate is: same groups, same position-bias correction
    weights: dict[str, Any] = {"propensity": curve.values if debiased else None,
                               "max_weight": cfg.train.ips_max_weight}
    champ_holdout = evaluate_groups(champion.scores(ranker), splits.holdout, **weights)
    champ_regression = (evaluate_groups(champion.scores(ranker), splits.regression, **weights)
                        if splits.regression else None)

    warm = settings.train.warm_start
    result = training.train(ranker, splits, cfg.train, adapter_name=version,
                            init_state=champion.state if warm else None,
                            init_scale=champion.residual_scale if warm else None,
                            on_progress=on_progress, should_stop=should_stop, propensity=curve.values)
    if result.stopped:
        error = "stopped by shutdown; no version kept"
        _close_run(engine, run_id, "cancelled", seconds=result.seconds, error=error)
        return CycleOutcome(run_id=run_id, trigger=trigger, status="cancelled", error=error)

    offpage = gate.OffpageHoldout.build(splits, cfg.gate, settings.train.seed)
    verdict = GateVerdict(compared_with=champion.version, decision=gate.decide(
        _per_group(result.holdout) or [], _per_group(champ_holdout) or [],
        _per_group(result.regression), _per_group(champ_regression), cfg.gate, seed=settings.train.seed,
        regression_enforced=champion.adapter is not None, **gate.OffpageHoldout.decide_args(
            offpage, lambda q, texts: ranker.score(q, texts, adapter=version), champion.scores(ranker))))
    info = artifacts.save_adapter(
        settings.storage.artifacts_dir, version, result.state, ranker.peft_config(version),
        meta={"parent": champion.version, "run_id": run_id, "trigger": trigger, "base_model": ranker.base.model_id},
    )
    metrics = _run_metrics(result, champion.version, champ_holdout, champ_regression, curve, debiased,
                           len(splits.selection))
    summary = CycleSummary(
        device=str(ranker.device), quantization=ranker.base.quantization, artifact_path=str(info.path),
        metrics=metrics, n_train=len(splits.train), n_holdout=len(splits.holdout), best_step=result.best_step,
        steps=result.steps, early_stopped=result.early_stopped, seconds=result.seconds)
    candidate = dict(
        version=version, parent_version=None if champion.adapter is None else champion.version,
        base_model=ranker.base.model_id, quantization=ranker.base.quantization,
        lora_config=ranker.peft_config(version), metrics=metrics, gate=verdict.record(), status="candidate",
        artifact_path=str(info.path), checksum=info.checksum, training_run_id=run_id,
        created_at=utcnow())
    finished = {**summary.model_dump(exclude={"artifact_path"}), "n_regression": len(splits.regression),
                "n_replay": splits.replay_count, "examples_per_s": result.examples_per_s, "gate": verdict.record(),
                "candidate_version": version, "data_cutoff": newest}
    # A cut link must not lose a trained candidate: it waits for the database (REGISTRY_PATIENCE_S). Giving
    # up fails the run; the parent then closes the run row and removes this folder, which nothing names.
    write_patiently(engine, lambda s: _register(s, run_id, candidate, finished), should_stop=should_stop,
                    what=f"register candidate {version} of training run {run_id}", patience_s=REGISTRY_PATIENCE_S)
    return CycleOutcome(run_id=run_id, trigger=trigger, status="succeeded", candidate_version=version,
                        gate=verdict, summary=summary)


def _register(s: Session, run_id: int, candidate: dict[str, Any], finished: dict[str, Any]) -> None:
    """Add the candidate version and close the run as succeeded, in one transaction; nothing if an earlier
    try did (its commit landed, and the cut swallowed the answer)."""
    if s.execute(select(col(AdapterVersion.id)).where(col(AdapterVersion.version) == candidate["version"])).first():
        return
    registry.add_version(session=s, version=AdapterVersion(**candidate))  # a fresh object for each try
    registry.finish_run(session=s, run_id=run_id, status="succeeded", **finished)


def _close_run(engine: Engine, run_id: int, status: RunStatus, **fields: Any) -> None:
    """Close the run row unless it is closed already; one try: when the database cannot be reached, the
    parent closes it from the outcome it is sent."""
    def close(s: Session) -> None:
        run = s.get(TrainingRun, run_id)
        if run is not None and run.status == "running":
            registry.finish_run(session=s, run_id=run_id, status=status, **fields)

    try:
        write_patiently(engine, close, what=f"record training run {run_id} as {status}", patience_s=0)
    except DatabaseUnavailable as exc:
        log.warning("%s; the daemon records it", exc)


def ignore_shutdown_signals() -> None:
    """Ctrl-C in a terminal, and a SIGTERM sent to the whole process group (systemd's default KillMode,
    `kill -- -PGID`), reach the training child too; the parent owns shutdown and tells it through `stop`
    (and kills it after the grace period), so the child ignores both. Its parent's death still kills it
    (SIGKILL by PR_SET_PDEATHSIG, and the watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def child_main(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """Entry point of the training child (see `daemon.training.trainer_process`)."""
    ignore_shutdown_signals()
    configure_logging(settings.log_level, settings.log_format, role="trainer", run_id=run_id,
                      text_format=f"%(asctime)s %(levelname)s [train run {run_id}] %(name)s: %(message)s")
    engine = make_engine(settings.storage.sqlalchemy_url, **settings.storage.engine_options)
    try:
        outcome = run_cycle(settings, engine, run_id, trigger, should_stop=stop.is_set,
                            on_progress=lambda event: report(conn, Progress(event=event)))
    except NotEnoughData as exc:
        outcome = _record_failure(engine, run_id, trigger, "skipped", str(exc))
    except Exception as exc:
        log.exception("training run %d failed", run_id)
        outcome = _record_failure(engine, run_id, trigger, "failed", f"{type(exc).__name__}: {exc}",
                                  tb=traceback.format_exc(limit=5))
    report(conn, outcome)
    conn.close()
    engine.dispose()


def _record_failure(engine: Engine, run_id: int, trigger: str, status: RunStatus, error: str,
                    tb: str | None = None) -> CycleOutcome:
    _close_run(engine, run_id, status, error=error if tb is None else f"{error}\n{tb}")
    return CycleOutcome(run_id=run_id, trigger=trigger, status=status, error=error)
