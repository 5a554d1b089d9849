"""`ranktune bench ingest|train|score|learn|parse|propensity`: benchmarks with JSON results (speed targets live here).

Each benchmark is a module `daemon.tools.bench_<name>` with `add_arguments(parser)` and
`run(args, settings) -> dict`; the result is printed as JSON and, with --out, written to a file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from daemon.settings import Settings

BENCHMARKS = ("ingest", "train", "score", "learn", "parse", "propensity")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="Run a benchmark and print JSON results.")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        module = f"daemon.tools.bench_{name}"
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # benchmark not built yet
        bp = bsub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        bp.add_argument("--out", type=Path, default=None, help="Also write the JSON result to this file.")
        mod.add_arguments(bp)
        bp.set_defaults(handler=run, bench_module=mod)


def run(args: argparse.Namespace, settings: Settings) -> int:
    result = {
        "benchmark": args.bench,
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        **args.bench_module.run(args, settings),
    }
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0
