"""`ranktune serve`: the scoring API alone (model, control listener, reconcile, HTTP)."""

from __future__ import annotations

import argparse

from daemon.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="Serve scores over HTTP (RANKTUNE_API_HOST/PORT) until SIGINT/SIGTERM.")
    p.add_argument("--no-control", action="store_true",
                   help="Do not use the control topic (no broker): converge by periodic reconcile only.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from daemon.app import Application

    return Application(settings, ["serve"], control=not args.no_control).run()
