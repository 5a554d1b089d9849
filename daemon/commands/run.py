"""`ranktune run [--roles ingest,scheduler,serve]`: the daemon, all roles in one process by default."""

from __future__ import annotations

import argparse

from daemon.errors import ConfigError
from daemon.settings import ALL_ROLES, Role, Settings


def _roles(text: str) -> list[Role]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in ALL_ROLES]
    if bad or not roles:
        raise argparse.ArgumentTypeError(f"roles must be a comma-separated subset of {','.join(ALL_ROLES)}")
    return roles  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="Run the daemon: ingestion, retraining scheduler and live scorer.")
    p.add_argument("--roles", type=_roles, default=None,
                   help=f"Comma-separated roles to run (default RANKTUNE_ROLES, i.e. {','.join(ALL_ROLES)}).")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from daemon.app import Application

    roles = args.roles or settings.roles
    if not roles:
        raise ConfigError("RANKTUNE_ROLES: at least one role is needed")
    return Application(settings, roles).run()
