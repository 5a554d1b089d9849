"""Automatic promotion after a training run: the gate's verdict, applied safely.

A candidate is promoted only when (1) its gate passed, (2) RANKTUNE_AUTO_PROMOTE is on, and (3) the
champion it was compared with is still the champion. (3) matters: if an operator promoted or rolled
back while the candidate trained, the gate's comparison no longer describes what shoppers get, and
promoting could lower the served quality. Such a candidate stays a candidate for an operator to judge.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from daemon.settings import Settings
from daemon.trainer_process import CycleOutcome
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

AUTO_ACTOR = "ranktune-gate"


def auto_promote(outcome: CycleOutcome, *, settings: Settings, engine: Engine) -> str | None:
    """Promote the outcome's candidate if allowed; return the promoted version or None."""
    version = outcome.candidate_version
    gate = outcome.gate or {}
    if outcome.status != "succeeded" or version is None:
        return None
    if not gate.get("passed"):
        log.info("candidate %s stays a candidate: gate failed (%s)", version, "; ".join(gate.get("reasons", [])))
        return None
    if not settings.auto_promote:
        log.info("candidate %s passed the gate; automatic promotion is off (RANKTUNE_AUTO_PROMOTE=false)", version)
        return None
    with session_scope(engine) as s:
        current = registry.champion(session=s)
        if current != gate.get("compared_with"):
            reason = f"champion changed from {gate.get('compared_with')} to {current} during training"
            registry.audit(session=s, actor=AUTO_ACTOR, action="skip_promote", to_version=version, reason=reason)
            log.warning("candidate %s not promoted: %s", version, reason)
            return None
        registry.promote(session=s, version=version, actor=AUTO_ACTOR, action="auto_promote",
                         reason=f"gate passed: NDCG@10 gain {gate.get('ndcg_gain', 0):+.4f} over {current}")
    log.info("promoted %s (was %s)", version, current)
    _notify(settings, version)
    return version


def _notify(settings: Settings, version: str) -> None:
    """Tell running scorers through the control topic; they also reconcile from the DB if this is lost."""
    try:
        from daemon.control import publish_control

        publish_control(settings, action="promote", version=version)
    except Exception as exc:  # the DB is the source of truth: replicas heal on their next reconcile
        log.warning("could not publish the promotion of %s on %s: %s", version, settings.control_topic, exc)
