"""`ranktune simulate`: synthetic shop traffic to Kafka or a JSONL file, plus ground-truth judgements."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.settings import Settings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _aware_ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a time zone, e.g. 2026-11-23T10:00:00+00:00")
    return value


def register(subparsers: Any) -> None:
    """Add the `simulate` sub-command."""
    p = subparsers.add_parser(
        "simulate",
        help="Produce synthetic shop traffic (catalog + feedback) to Kafka or a JSONL file.",
        description=(
            "Simulate an e-commerce shop: a catalog, queries with typos and synonyms, and clicks from a "
            "position-biased model over a hidden ground-truth relevance. Deterministic for a seed. "
            "Writes to Kafka (settings' catalog/feedback topics) unless --out is given."
        ),
    )
    p.add_argument("--seed", type=int, default=7, help="Random seed (default 7).")
    p.add_argument("--items", type=_positive_int, default=300, help="Launch catalog size (default 300).")
    p.add_argument("--events", type=_count, default=5000, help="Feedback events to emit (default 5000).")
    p.add_argument("--rate", type=_rate, default=None, help="Events per second (default: as fast as possible).")
    p.add_argument(
        "--drift-at",
        type=_fraction,
        default=None,
        help="Fraction of the events after which drift begins: new brands, winter preference, new slang.",
    )
    p.add_argument("--malformed-rate", type=_fraction, default=0.0, help="Share of bad records to inject.")
    p.add_argument("--page-size", type=_positive_int, default=10, help="Results per page (default 10).")
    p.add_argument("--start-ts", type=_aware_ts, default=None, help="ISO time of the first event (with zone).")
    p.add_argument("--out", type=Path, default=None, help="Write JSONL here instead of producing to Kafka.")
    p.add_argument("--judgements", type=Path, default=None, help="Also write pre/post eval judgements (JSON).")
    p.add_argument("--eval-queries", type=_positive_int, default=40, help="Judged queries per phase.")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (overrides settings).")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the simulation as the parsed `args` ask; return the exit status."""
    from daemon.tools.sim_output import produce_kafka, summary_line, write_jsonl, write_judgements
    from daemon.tools.simulate import SimConfig, generate

    extra: dict[str, Any] = {} if args.start_ts is None else {"start_ts": args.start_ts}
    try:
        cfg = SimConfig(
            seed=args.seed,
            n_items=args.items,
            n_events=args.events,
            events_per_s=args.rate,
            drift_at=args.drift_at,
            malformed_rate=args.malformed_rate,
            page_size=args.page_size,
            **extra,
        )
    except ValueError as exc:
        print(f"ranktune simulate: {exc}", file=sys.stderr)
        return 2
    if args.judgements is not None:
        n = write_judgements(cfg, args.judgements, n_queries=args.eval_queries)
        print(f"simulate: {n} judged queries -> {args.judgements}", file=sys.stderr)
    if args.out is not None:
        counts = write_jsonl(generate(cfg), args.out, settings, cfg.events_per_s)
        target = str(args.out)
    else:
        bootstrap = args.bootstrap or settings.kafka.bootstrap
        counts = produce_kafka(generate(cfg), settings, bootstrap, cfg.events_per_s)
        target = f"kafka {bootstrap}"
    print(summary_line(counts, target), file=sys.stderr)
    return 0
