"""`ranktune eval --judgements FILE`: NDCG@10 and MRR of the base model, the champion and any version on an
operator's own human-judged queries, with bootstrap intervals over queries.

The judged file is JSONL or TSV (query, item_id, text, grade; see `adapters.judged`). Versions are read
from the registry and their artifacts verified against the recorded checksum, as a swap does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from daemon.commands.common import open_existing
from daemon.commands.errors import UsageError
from daemon.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="Score base, champion and versions on a human-judged query file.")
    p.add_argument("--judgements", type=Path, required=True, help="JSONL or TSV: query, item_id, text, grade.")
    p.add_argument("--versions", default="base,champion",
                   help="Comma-separated: base, champion, or version names (default %(default)s).")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.judged import evaluate_judged, read_judgements

    if not args.judgements.is_file():
        raise UsageError(f"--judgements: no file {args.judgements}")
    try:
        judged = read_judgements(args.judgements)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--judgements {args.judgements}: {exc}") from None
    wanted = [v.strip() for v in args.versions.split(",") if v.strip()]
    if not wanted:
        raise UsageError("--versions: name at least one of base, champion or a version")
    rows: list[dict[str, Any]] = []
    for label, score in _scorers(settings, wanted):
        result = evaluate_judged(score, judged)
        rows.append({"version": label, **result.to_dict()})
    if args.json:
        print(json.dumps({"judgements": str(args.judgements), "results": rows}))
        return 0
    print(f"{'version':<18} {'NDCG@10':>8} {'90% interval':>17} {'MRR':>7} {'90% interval':>17} queries")
    for r in rows:
        lo, hi = r["ndcg10_ci"]
        mlo, mhi = r["mrr_ci"]
        print(f"{r['version']:<18} {r['ndcg10']:>8.4f} [{lo:.4f}, {hi:.4f}] {r['mrr']:>7.4f} [{mlo:.4f}, {mhi:.4f}] "
              f"{r['n_queries']} ({r['n_skipped']} skipped: one grade only)")
    return 0


def _scorers(settings: Settings, wanted: list[str]) -> list[tuple[str, Any]]:
    """(label, score function) per wanted version, all on one loaded base."""
    from adapters.ranker import Ranker
    from daemon.serving.control import check_version, load_registered
    from storage import registry
    from storage.db import session_scope

    engine = open_existing(settings)
    try:
        with session_scope(engine) as s:
            champion = registry.champion(session=s)
        ranker = Ranker.load(settings.model, settings.lora, batch_size=settings.scorer.max_batch)
        out: list[tuple[str, Any]] = []
        for name in wanted:
            version = champion if name == "champion" else check_version(name)
            label = f"champion ({version})" if name == "champion" else version
            if version == registry.BASE:
                out.append((label, _score(ranker, None)))
                continue
            if version not in ranker.adapter_names:
                loaded = load_registered(engine, settings.storage.artifacts_dir, version)
                ranker.add_adapter(version, loaded.state, loaded.peft_config)
            out.append((label, _score(ranker, version)))
        return out
    finally:
        engine.dispose()


def _score(ranker: Any, adapter: str | None) -> Any:
    return lambda query, texts: ranker.score(query, texts, adapter=adapter)
