"""`ranktune adapters list|show|promote|rollback`: the registry, directly in the database.

promote/rollback verify the target's artifact, move the aliases with an audit row, and publish a control
notice so running scorers swap (if the broker is unreachable they pick it up at their next reconcile).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from sqlalchemy.engine import Engine

from daemon.commands.common import open_existing
from daemon.settings import Settings
from daemon.status import holdout_ndcg, version_dict
from storage import registry
from storage.db import session_scope


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("adapters", help="List, inspect, promote or roll back adapter versions.")
    asub = p.add_subparsers(dest="adapters_action", required=True, metavar="ACTION")
    ls = asub.add_parser("list", help="All versions with status and holdout metrics.")
    ls.add_argument("--json", action="store_true", help="Machine-readable output.")
    show = asub.add_parser("show", help="One version: metadata, gate record, audit history.")
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="Machine-readable output.")
    for name, helptext in (("promote", "Make VERSION (or `base`) the champion."),
                           ("rollback", "Go back to the previous champion.")):
        a = asub.add_parser(name, help=helptext)
        if name == "promote":
            a.add_argument("version")
        a.add_argument("--actor", default=_user(), help="Who acts, for the audit log (default: $USER).")
        a.add_argument("--reason", default=None, help="Why, for the audit log.")
        a.add_argument("--no-publish", action="store_true", help="Do not send the control notice.")
        a.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.set_defaults(handler=run)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "cli"


def _f4(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    """list/show read the registry only (no model stack is imported); promote/rollback verify artifacts."""
    engine = open_existing(settings)  # never creates or migrates a database: there is nothing to list in a new one
    try:
        if args.adapters_action in ("promote", "rollback"):
            return _act(args, settings, engine)
        return _read(args, engine)
    finally:
        engine.dispose()


def _act(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    """promote / rollback, checked against the base and quantization `settings` name, then announced."""
    from adapters.config import BaseIdentity, base_model_ids, expected_quantization
    from daemon.serving.control import ControlPublisher, check_version
    from daemon.training.promotion import promote, rollback

    publisher = None if args.no_publish else ControlPublisher(settings)
    try:
        common: dict[str, Any] = {"engine": engine, "actor": args.actor, "reason": args.reason,
                                  "artifacts_dir": settings.storage.artifacts_dir,
                                  "publish": publisher.publish if publisher else None,
                                  "serving": BaseIdentity(base_model_ids(settings.model.base_path),
                                                          expected_quantization(settings.model.quantization))}
        result = (promote(version=check_version(args.version), **common) if args.adapters_action == "promote"
                  else rollback(**common))
    finally:
        if publisher is not None:
            publisher.close()
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        note = "scorers notified" if result.published else (
            f"NOT published ({result.publish_error}); scorers follow at their next reconcile"
            if result.publish_error else "not published")
        print(f"{result.action}: {result.from_version} -> {result.to_version} (audit #{result.audit_id}); {note}")
    return 0


def _read(args: argparse.Namespace, engine: Engine) -> int:
    """list / show: the registry as a table or JSON."""
    with session_scope(engine) as s:
        champion = registry.champion(session=s)
        previous = registry.get_alias(session=s, name=registry.PREVIOUS)
        if args.adapters_action == "list":
            rows = [version_dict(r) for r in registry.list_versions(session=s)]
            if args.json:
                print(json.dumps({"champion": champion, "previous": previous, "versions": rows}, default=str))
                return 0
            print(f"champion: {champion}   previous: {previous or '-'}")
            print(f"{'version':<10} {'status':<10} {'parent':<10} {'ndcg@10':>8}  created")
            for r in rows:
                print(f"{r['version']:<10} {r['status']:<10} {r['parent_version'] or '-':<10} "
                      f"{_f4(holdout_ndcg(r['metrics'])):>8}  {r['created_at']}")
            return 0
        version = args.version  # a name that is no version is simply not found
        info: dict[str, Any] = ({"version": version, "status": "champion" if champion == version else "base"}
                                if version == registry.BASE
                                else version_dict(registry.get_version(session=s, version=version)))
        info["history"] = [
            {"ts": a.ts.isoformat(), "actor": a.actor, "action": a.action, "from": a.from_version,
             "to": a.to_version, "reason": a.reason}
            for a in registry.audit_page(session=s, limit=500, version=version)
        ]
    if args.json:
        print(json.dumps(info, default=str))
    else:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0
