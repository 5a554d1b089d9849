"""Event parser cost: CPU microseconds per record of `parse_record` on simulated feedback (best of N rounds).

`--against DIR` also times the `daemon/ingest/events.py` of another checkout (e.g. the commit before a
change: `git archive <commit> | tar -x -C DIR`) in the same process, the two alternating round by round,
so that both see the same machine load. CPU time (`time.process_time`) rather than wall time: on a shared
machine it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from daemon.ingest import events
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.settings import Settings
from daemon.tools.simulate import SimConfig, generate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=10000, help="Feedback records per round (default 10000).")
    p.add_argument("--rounds", type=int, default=12, help="Rounds; the best one counts (default 12).")
    p.add_argument("--seed", type=int, default=3, help="Simulation seed.")
    p.add_argument("--against", type=Path, default=None,
                   help="Root of another checkout whose daemon/ingest/events.py is timed alongside.")


def _load(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("ranktune_bench_other_events", root / "daemon/ingest/events.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _round(module: ModuleType, settings: Settings, values: list[tuple[bytes | None, bytes]]) -> float:
    config = module.ParseConfig.from_settings(settings)
    parse, pseudonymize = module.parse_record, Pseudonymizer("bench-key")
    now = time.time()
    kw: dict[str, Any] = {}
    params = inspect.signature(parse).parameters
    if "now" in params:  # what the ingest loop passes per record
        kw = {"timestamp_ms": int(now * 1000), "now": now}
        if "not_after" in params:
            kw["not_after"] = module.future_limit(config, [kw["timestamp_ms"]], now)
    topic = settings.kafka.feedback_topic
    t0 = time.process_time()
    for offset, (key, value) in enumerate(values):
        parse(topic, 0, offset, key, value, config=config, pseudonymize=pseudonymize, **kw)
    return time.process_time() - t0


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    records = [r for r in generate(SimConfig(seed=args.seed, n_items=60, n_events=args.records * 2))
               if r.stream == "feedback" and r.value is not None][: args.records]
    values = [(r.key, r.value) for r in records if r.value is not None]
    modules = {"this": events} | ({"against": _load(args.against)} if args.against else {})
    best = {name: float("inf") for name in modules}
    for _ in range(args.rounds):
        for name, module in modules.items():
            best[name] = min(best[name], _round(module, settings, values))
    us = {name: round(1e6 * seconds / len(values), 2) for name, seconds in best.items()}
    out: dict[str, Any] = {"records": len(values), "rounds": args.rounds, "us_per_record": us}
    if "against" in us:
        out["against"] = str(args.against)
        out["ratio"] = round(us["this"] / us["against"], 3)
    return out
