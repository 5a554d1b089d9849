"""`ranktune simulate`: synthetic shop traffic to Kafka or a JSONL file, plus ground-truth judgements."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
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
    p.add_argument("--closed-loop", metavar="URL", default=None,
                   help="Ask the live scorer at URL (POST /v1/score) for the order of every page, as real shops do.")
    g = p.add_argument_group("semi-synthetic clicks from a judged set (instead of the simulated shop)")
    g.add_argument("--from-judgements", type=Path, default=None, metavar="FILE",
                   help="JSONL or TSV of graded (query, item_id, text, grade): simulate position-biased clicks "
                   "on its queries (the unbiased learning-to-rank literature's protocol). --events counts pages.")
    g.add_argument("--eta", type=float, default=1.0, help="Examination power: P(examine k) = 1/(k+1)^eta.")
    g.add_argument("--noise", type=_fraction, default=0.01, help="Click probability of any examined-or-not item.")
    g.add_argument("--explore-rate", type=_fraction, default=0.0,
                   help="Share of pages shuffled on purpose and marked (randomized propensity estimation).")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the simulation as the parsed `args` ask; return the exit status."""
    from daemon.tools.sim_output import produce_kafka, summary_line, write_jsonl, write_judgements
    from daemon.tools.simulate import SimConfig, SimRecord, generate

    order = None
    if args.closed_loop is not None:
        from daemon.tools.closed_loop import ScorerOrder

        order = ScorerOrder(args.closed_loop)

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
    records: Iterable[SimRecord] = generate(cfg, order)
    if args.from_judgements is not None:
        records = _judged_traffic(args, order)
    if args.out is not None:
        counts = write_jsonl(records, args.out, settings, cfg.events_per_s)
        target = str(args.out)
    else:
        bootstrap = args.bootstrap or settings.kafka.bootstrap
        counts = produce_kafka(records, settings, bootstrap, cfg.events_per_s)
        target = f"kafka {bootstrap}"
    print(summary_line(counts, target), file=sys.stderr)
    if order is not None:
        print(f"simulate: closed loop via {args.closed_loop}: {dict(order.counts)}; ordered by {dict(order.versions)}",
              file=sys.stderr)
        order.close()
    return 0


def _judged_traffic(args: argparse.Namespace, order: Any) -> list[Any]:
    """Feedback records of `--events` pages of clicks simulated on the judged file's queries."""
    import json

    import numpy as np

    from adapters.judged import read_judgements
    from daemon.commands.errors import UsageError
    from daemon.tools.semi_synthetic import clicks_from_judgements
    from daemon.tools.shops import ClickModel
    from daemon.tools.simulate import SimRecord

    try:
        judged = read_judgements(args.from_judgements)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--from-judgements {args.from_judgements}: {exc}") from None
    queries = [{"query": q.query, "items": [{"item_id": i, "text": t, "grade": g}
                                            for i, t, g in zip(q.item_ids, q.texts, q.grades, strict=True)]}
               for q in judged]

    def scores(query: str, texts: Any) -> Any:  # the scorer's order as scores (best first = highest)
        served = order(query, [(str(k), str(t)) for k, t in enumerate(texts)])
        out = np.zeros(len(texts))
        out[served.order] = -np.arange(len(served.order), dtype=np.float64)
        return out

    events = clicks_from_judgements(queries, max(1, args.events), ClickModel(eta=args.eta, noise=args.noise),
                                    page_size=args.page_size, order=scores if order is not None else None,
                                    seed=args.seed, explore_rate=args.explore_rate)
    fields = ("event_id", "query", "item_id", "action", "position", "request_id", "item_text", "explore",
              "ranked_position")
    out = []
    for e in events:
        payload = {k: e[k] for k in fields if e.get(k) is not None} | {"ts": e["ts"].isoformat()}
        if "explore" in payload:
            payload["explore"] = True  # the event schema's mark is a bool (the generator names the mode)
        value = json.dumps(payload, separators=(",", ":")).encode()
        out.append(SimRecord("feedback", "feedback", str(e["request_id"]).encode(), value, payload, "pre",
                             grade=int(e["grade"])))
    return out
