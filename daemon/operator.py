"""Operator actions shared by the CLI and the HTTP API: promote and rollback.

Each action (1) checks the target's artifact against the registry's checksum, so a corrupt or missing
version never becomes champion, (2) moves the aliases and appends the audit row in one transaction
(`storage.registry`), and (3) after the commit, publishes a control notice so running scorers swap.
A refused action writes nothing. A failed publish is reported, not raised: the change is committed and
every replica picks it up at its next reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from adapters.artifacts import load_adapter
from daemon.control import ControlMessage, check_version
from daemon.errors import BrokerUnavailable
from storage import registry
from storage.db import session_scope
from storage.errors import InvalidTransition

log = logging.getLogger(__name__)

Publish = Callable[[ControlMessage], None]
"""Sends a control notice (e.g. `ControlPublisher.publish`); raises BrokerUnavailable."""


@dataclass(frozen=True)
class ActionResult:
    """What an operator action did."""

    action: str
    from_version: str
    to_version: str
    audit_id: int
    published: bool  # the control notice reached the broker
    publish_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "from": self.from_version, "to": self.to_version,
                "audit_id": self.audit_id, "published": self.published, "publish_error": self.publish_error}


def _verify(session: Session, artifacts_dir: Path | None, version: str) -> None:
    """Raise VersionNotFound, ArtifactMissing or ArtifactCorrupt unless `version` can be served."""
    if version == registry.BASE:
        return
    row = registry.get_version(session=session, version=version)
    if artifacts_dir is not None:
        load_adapter(artifacts_dir, version, expected_checksum=row.checksum)


def promote(*, engine: Engine, version: str, actor: str, reason: str | None = None,
            artifacts_dir: Path | None = None, publish: Publish | None = None) -> ActionResult:
    """Make `version` (or `base`) the champion. With `artifacts_dir`, its artifact is verified first."""
    check_version(version)
    with session_scope(engine) as s:
        _verify(s, artifacts_dir, version)
        row = registry.promote(session=s, version=version, actor=actor, reason=reason)
        result = ("promote", row.from_version or registry.BASE, version, row.id)
    return _announce(*result, publish=publish)


def rollback(*, engine: Engine, actor: str, reason: str | None = None,
             artifacts_dir: Path | None = None, publish: Publish | None = None) -> ActionResult:
    """Go back to the previous champion. With `artifacts_dir`, its artifact is verified first."""
    with session_scope(engine) as s:
        target = registry.get_alias(session=s, name=registry.PREVIOUS)
        if target is None:
            raise InvalidTransition("there is no previous champion to roll back to")
        _verify(s, artifacts_dir, target)
        row = registry.rollback(session=s, actor=actor, reason=reason)
        result = ("rollback", row.from_version or registry.BASE, row.to_version or registry.BASE, row.id)
    return _announce(*result, publish=publish)


def _announce(action: str, frm: str, to: str, audit_id: int | None, *, publish: Publish | None) -> ActionResult:
    log.info("%s: champion %s -> %s (audit #%s)", action, frm, to, audit_id)
    published, error = False, None
    if publish is not None:
        try:
            publish(ControlMessage(action=action, version=to, from_version=frm))
            published = True
        except BrokerUnavailable as exc:
            error = str(exc)
            log.warning("%s of %s is committed but the control notice failed (%s); "
                        "scorers pick it up at their next reconcile", action, to, exc)
    return ActionResult(action, frm, to, int(audit_id or 0), published, error)
