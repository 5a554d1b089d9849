"""`ranktune status`: champion, candidates, recent training runs, drift, and stored-event counters."""

from __future__ import annotations

import argparse
import json
from typing import Any

from daemon.commands.common import open_existing
from daemon.settings import Settings
from daemon.status import status_document


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="Champion, candidates, last training runs, drift and ingestion counters.")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.add_argument("--runs", type=_runs, default=5, help="How many recent training runs to show (0 to 1000).")
    p.set_defaults(handler=run)


def _runs(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"{n} is not within 0 to 1000")
    return n


def collect(settings: Settings, runs: int = 5) -> dict[str, Any]:
    """Everything `status` shows, as plain data (no scheduler in this process: schedule unknown)."""
    engine = open_existing(settings)  # read-only: never creates or migrates the database
    try:
        return status_document(engine, runs=runs)
    finally:
        engine.dispose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    info = collect(settings, args.runs)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"champion: {info['champion']}   previous: {info['previous'] or '-'}")
    cands = info["candidates"]
    print(f"candidates: {', '.join(c['version'] for c in cands) if cands else 'none'}")
    print("last training runs:")
    for r in info["training_runs"] or [{}]:
        if not r:
            print("  none")
            break
        print(f"  #{r['id']} {r['trigger']:<8} {r['status']:<9} {r['started_at']}  candidate={r['candidate_version']}"
              f" gate={'-' if r['gate_passed'] is None else ('pass' if r['gate_passed'] else 'fail')}"
              f"{'  ' + (r['error'] or r['reason']) if (r['error'] or r['reason']) else ''}")
    d = info["drift"]
    print("drift: none yet" if d is None else
          f"drift: {d['created_at']} champion={d['champion_version']} fired={d['fired']} {', '.join(d['reasons'])}")
    for line in position_bias_lines(info["position_bias"]):
        print(line)
    ing = info["ingestion"]
    print(f"ingestion: {ing['feedback_events']} events ({ing['labelled_events']} labelled), "
          f"{ing['catalog_items']} catalog items, latest at {ing['latest_ingested_at'] or '-'}")
    return 0


def _learning_line(label: str, d: dict[str, Any]) -> list[str]:
    p = d["propensity"]
    head = f"  {label} run #{d['run_id']} ({d['candidate_version'] or '-'} vs {d['compared_with'] or '-'}): "
    if p is None:
        head += "no propensity curve"
    else:
        used = "" if p["used"] is None else ("; used by loss and gate" if p["used"] else "; not used (debias off)")
        head += f"{p['method']} over {p['n_pages'] if p['n_pages'] is not None else '?'} pages{used}"
    lines = [head]
    if p is not None and p["estimated"]:
        lines.append("    propensity by position 1..: " + " ".join(f"{float(v):.2f}" for v in p["estimated"]))
    mdg = d["min_detectable_gain"]
    lines.append("    gate: min detectable NDCG@10 gain " + ("-" if mdg is None else f"{float(mdg):.4f}") +
                 ("" if d["gate_passed"] is None else f" ({'passed' if d['gate_passed'] else 'refused'})"))
    return lines


def position_bias_lines(pb: dict[str, Any]) -> list[str]:
    """The `position bias:` block of the text output."""
    champion, latest = pb["champion_run"], pb["latest_run"]
    if champion is None and latest is None:
        return ["position bias: no training run yet"]
    lines = ["position bias:"]
    if champion is not None:
        lines += _learning_line("champion's", champion)
    if latest is not None and (champion is None or latest["run_id"] != champion["run_id"]):
        lines += _learning_line("latest", latest)
    return lines
