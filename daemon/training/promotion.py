"""Promotion: the one path by which the champion changes, automatically after a gate pass or by an operator.

Every change (1) checks the target's artifact against the registry's checksum, so a corrupt or missing
version never becomes champion, (2) moves the aliases and appends the audit row in one serialized
transaction (`storage.db.write_scope` + the registry's compare-and-set), and (3) after the commit,
publishes a control notice so running scorers swap. A refused change writes nothing. A failed publish is
reported, not raised: the change is committed and every replica picks it up at its next reconcile.

Automatic promotion (`auto_promote`) is the same path with `expected` set to the champion the gate
compared against: if an operator promoted or rolled back while the candidate trained, the comparison no
longer describes what shoppers get, so the candidate stays a candidate for an operator to judge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from adapters.artifacts import load_adapter
from adapters.config import BaseIdentity
from daemon.errors import BrokerUnavailable
from daemon.serving.control import ControlMessage, check_version
from daemon.training.messages import CycleOutcome
from storage import registry
from storage.db import session_scope, write_scope
from storage.errors import ChampionChanged, InvalidTransition

log = logging.getLogger(__name__)

AUTO_ACTOR = "ranktune-gate"

Publish = Callable[[ControlMessage], None]
"""Sends a control notice (e.g. `ControlPublisher.publish`); raises BrokerUnavailable."""


@dataclass(frozen=True)
class ActionResult:
    """What a promotion or rollback did."""

    action: str
    from_version: str
    to_version: str
    audit_id: int
    published: bool  # the control notice reached the broker
    publish_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "from": self.from_version, "to": self.to_version,
                "audit_id": self.audit_id, "published": self.published, "publish_error": self.publish_error}


def _verify(session: Session, artifacts_dir: Path | None, version: str, serving: BaseIdentity | None = None) -> None:
    """Raise VersionNotFound, ArtifactMissing or ArtifactCorrupt unless `version` can be served; with
    `serving` (the base and quantization the scorers run), InvalidTransition when the version was trained on
    another base or quantization: every scorer would refuse it and keep serving the old champion."""
    if version == registry.BASE:
        return
    row = registry.get_version(session=session, version=version)
    why = serving.refusal(row.base_model, row.quantization) if serving is not None else None
    if why:
        raise InvalidTransition(f"version {version} {why}, and the scorers would refuse it")
    if artifacts_dir is not None:
        load_adapter(artifacts_dir, version, expected_checksum=row.checksum)


def promote(*, engine: Engine, version: str, actor: str, reason: str | None = None, action: str = "promote",
            expected: str | None = None, artifacts_dir: Path | None = None,
            publish: Publish | None = None, serving: BaseIdentity | None = None) -> ActionResult:
    """Make `version` (or `base`) the champion; with `expected`, only if the champion is still that one
    (else ChampionChanged). With `artifacts_dir`, the artifact is verified first; with `serving`, that
    the version was trained on that base and quantization (see `_verify`)."""
    check_version(version)
    with session_scope(engine) as s:  # reading an artifact takes a while: outside the write lock
        _verify(s, artifacts_dir, version, serving)
    with write_scope(engine) as s:
        row = registry.promote(session=s, version=version, actor=actor, reason=reason, action=action,
                               expected=expected)
        result = (action, row.from_version or registry.BASE, version, row.id)
    return _announce(*result, publish=publish)


def rollback(*, engine: Engine, actor: str, reason: str | None = None, expected: str | None = None,
             artifacts_dir: Path | None = None, publish: Publish | None = None,
             serving: BaseIdentity | None = None) -> ActionResult:
    """Go back to the previous champion (see `promote` for `expected`, `artifacts_dir` and `serving`)."""
    with session_scope(engine) as s:
        target = registry.get_alias(session=s, name=registry.PREVIOUS)
        if target is None:
            raise InvalidTransition("there is no previous champion to roll back to")
        _verify(s, artifacts_dir, target, serving)
    with write_scope(engine) as s:
        # the target checked above, or nothing: a promotion in between changes what `previous` names
        row = registry.rollback(session=s, actor=actor, reason=reason, expected=expected, to=target)
        result = ("rollback", row.from_version or registry.BASE, row.to_version or registry.BASE, row.id)
    return _announce(*result, publish=publish)


def auto_promote(outcome: CycleOutcome, *, engine: Engine, auto: bool, artifacts_dir: Path | None = None,
                 publish: Publish | None = None) -> str | None:
    """Promote the outcome's candidate if its gate passed, `auto` is on and the champion it was compared
    with is still the champion; return the promoted version or None."""
    version, verdict = outcome.candidate_version, outcome.gate
    if outcome.status != "succeeded" or version is None or verdict is None:
        return None
    if not verdict.passed:
        log.info("candidate %s stays a candidate: gate failed (%s)", version, "; ".join(verdict.decision.reasons))
        return None
    if not auto:
        log.info("candidate %s passed the gate; automatic promotion is off (RANKTUNE_GATE_AUTO_PROMOTE=false)",
                 version)
        return None
    try:
        promote(engine=engine, version=version, actor=AUTO_ACTOR, action="auto_promote",
                expected=verdict.compared_with, artifacts_dir=artifacts_dir, publish=publish,
                reason=f"gate passed: NDCG@10 gain {verdict.decision.ndcg_gain:+.4f} over {verdict.compared_with}")
    except ChampionChanged as exc:
        reason = f"champion changed during training: {exc}"
        with session_scope(engine) as s:
            registry.audit(session=s, actor=AUTO_ACTOR, action="skip_promote", to_version=version, reason=reason)
        log.warning("candidate %s not promoted: %s", version, reason)
        return None
    return version


def _announce(action: str, frm: str, to: str, audit_id: int | None, *, publish: Publish | None) -> ActionResult:
    log.info("%s: champion %s -> %s (audit #%s)", action, frm, to, audit_id)
    published, error = False, None
    if publish is not None:
        try:
            publish(ControlMessage(action="rollback" if action == "rollback" else "promote", version=to,
                                   from_version=frm))
            published = True
        except BrokerUnavailable as exc:
            error = str(exc)
            log.warning("%s of %s is committed but the control notice failed (%s); "
                        "scorers pick it up at their next reconcile", action, to, exc)
    return ActionResult(action, frm, to, int(audit_id or 0), published, error)
