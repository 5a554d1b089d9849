"""Scoring throughput and latency over HTTP, beside the raw model forward; and hot-swap latency.

Starts a real serve role (uvicorn on a free port, fresh SQLite, two synthetic adapter versions, champion
v0001, no broker) and drives `POST /v1/score` with `--items`-item requests from N client threads (in a
separate process, so they do not share the server's GIL) for `--duration` seconds per concurrency level. The
floor is the raw `Ranker.score_pairs` time for the same batches on the same model, measured right before each
level while the scorer is idle. Overhead at saturation (the highest concurrency) is `(1 / requests-per-second)
/ floor - 1`; `overhead_vs_server_model_pct` compares with the model time the server itself measured in those
rounds instead, which is immune to drift in the machine's speed. The swap phase promotes v0002/v0001
alternately over HTTP while the highest concurrency runs, and reports the time from the promote call to the
first response from the new version, and the p99 of requests that overlapped a swap against the steady p99.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import secrets
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr

from daemon.settings import Settings
from daemon.tools.bench_load import drive
from storage.db import make_engine, upgrade

TARGET_OVERHEAD = 0.15
TARGET_SWAP_S = 1.0
TARGET_SPIKE = 2.0

_NOUNS = ("shoe", "jacket", "tent", "backpack", "kettle", "lamp", "sofa", "watch", "knife", "scarf", "boots")
_ADJ = ("red", "blue", "waterproof", "leather", "wool", "lightweight", "vintage", "compact", "insulated", "linen")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", default="1,2,4,8", help="Client threads per level, comma-separated.")
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per concurrency level (default 10).")
    p.add_argument("--items", type=int, default=50, help="Items per request (default 50).")
    p.add_argument("--swaps", type=int, default=6, help="Promotes during the swap phase (default 6).")
    p.add_argument("--swap-interval", type=float, default=2.0, help="Seconds between two promotes (default 2).")
    p.add_argument("--seed", type=int, default=3, help="Payload seed.")


def _payloads(n: int, items: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        query = f"{rng.choice(_ADJ)} {rng.choice(_NOUNS)}"
        out.append({"query": query, "items": [
            {"item_id": f"i{k}", "text": f"{rng.choice(_ADJ)} {rng.choice(_ADJ)} {rng.choice(_NOUNS)}, "
                                         f"model {rng.randint(100, 999)}, {rng.choice(_ADJ)} finish"}
            for k in range(items)]})
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _level(pool: ProcessPoolExecutor, url: str, payloads: list[dict[str, Any]], n: int, duration: float,
           items: int) -> dict[str, Any]:
    warmup = min(2.0, duration / 4)  # not counted
    t_start = time.monotonic() + warmup
    records = pool.submit(drive, url, payloads, n, warmup + duration).result()
    t_end = max(r[1] for r in records)
    done = [r for r in records if t_start <= r[0]]
    ok = [r for r in done if r[2] == 200]
    lat = [(r[1] - r[0]) * 1e3 for r in ok]
    rps = len(ok) / (t_end - t_start)
    model = statistics.mean(r[4] for r in ok) if ok else float("nan")
    return {"concurrency": n, "requests": len(done), "errors": len(done) - len(ok), "rps": round(rps, 2),
            "pairs_per_s": round(rps * items, 1), "server_model_ms_mean": round(model, 1),
            "p50_ms": round(_pct(lat, 50), 1), "p95_ms": round(_pct(lat, 95), 1), "p99_ms": round(_pct(lat, 99), 1)}


def _floor(ranker: Any, state: Any, payloads: list[dict[str, Any]], tag: str, repeats: int = 12) -> list[float]:
    """Raw forward times (ms) of one request's batch with an adapter, on the serving model, outside serving."""
    name = f"bench_floor_{tag}"
    ranker.add_adapter(name, *state)
    try:
        times = []
        for i in range(repeats + 3):
            p = payloads[i % len(payloads)]
            pairs = [(p["query"], it["text"]) for it in p["items"]]
            t0 = time.perf_counter()
            ranker.score_pairs(pairs, adapter=name)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        ranker.delete_adapter(name)
    return times


def _swap_phase(pool: ProcessPoolExecutor, url: str, token: str, payloads: list[dict[str, Any]], n: int,
                args: argparse.Namespace, versions: tuple[str, str]) -> dict[str, Any]:
    calls: list[tuple[float, float, str]] = []
    load = pool.submit(drive, url, payloads, n, (args.swaps + 1.5) * args.swap_interval)
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as op:
        time.sleep(args.swap_interval)
        for k in range(args.swaps):
            target = versions[(k + 1) % 2]
            t0 = time.monotonic()
            op.post(f"/v1/adapters/{target}/promote").raise_for_status()
            calls.append((t0, time.monotonic(), target))
            time.sleep(args.swap_interval)
    records = load.result()
    recs = sorted(records, key=lambda r: r[1])
    visible, windows = [], []
    for t0, _, target in calls:
        first = next((r[1] for r in recs if r[1] >= t0 and r[3] == target), None)
        if first is not None:
            visible.append((first - t0) * 1e3)
            windows.append((t0, first))
    during = [(r[1] - r[0]) * 1e3 for r in recs if r[2] == 200 and any(r[0] <= e and r[1] >= s for s, e in windows)]
    steady = [(r[1] - r[0]) * 1e3 for r in recs if r[2] == 200 and not any(r[0] <= e + 1 and r[1] >= s
                                                                             for s, e in windows)]
    return {"swaps": len(calls), "visible_ms": [round(v, 1) for v in visible],
            "visible_ms_max": round(max(visible), 1) if visible else None,
            "promote_call_ms": [round((b - a) * 1e3, 1) for a, b, _ in calls],
            "errors": sum(1 for r in recs if r[2] != 200),
            "p99_during_swaps_ms": round(_pct(during, 99), 1), "max_during_swaps_ms": round(max(during), 1)
            if during else None, "p99_steady_ms": round(_pct(steady, 99), 1)}


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from adapters.ranker import Ranker
    from daemon.serving.control import load_registered
    from daemon.serving.role import ServeRole
    from daemon.tools.synthetic_adapters import make_version
    from daemon.training.promotion import promote

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="ranktune-bench-") as tmp:
        s = settings.replace(**{"storage_database_url": f"sqlite:///{Path(tmp) / 'bench.db'}",
                                        "storage_artifacts_dir": Path(tmp) / "artifacts", "api_port": 0,
                                        "api_host": "127.0.0.1", "api_token": SecretStr(token),
                                        "api_max_items": max(settings.api.max_items, args.items)})
        engine = make_engine(s.storage.sqlalchemy_url, **s.storage.engine_options)
        upgrade(engine)
        ranker = Ranker.load(s.model, s.lora, batch_size=s.scorer.max_batch)
        v1, v2 = (make_version(ranker, engine=engine, artifacts_dir=s.storage.artifacts_dir, seed=k) for k in (1, 2))
        promote(engine=engine, version=v1, actor="bench")
        payloads = _payloads(16, args.items, args.seed)
        loaded = load_registered(engine, s.storage.artifacts_dir, v1)
        state = (loaded.state, loaded.peft_config)
        role = ServeRole(s, engine=engine, ranker=ranker, control=False).start()
        results = []
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                for n in levels:
                    # The floor of each level is measured right before it, while the scorer is idle (the
                    # Ranker locks every call), because this machine's speed drifts between minutes.
                    floor_ms = statistics.median(_floor(ranker, state, payloads, f"c{n}"))
                    level = _level(pool, role.url, payloads, n, args.duration, args.items)
                    per_request = 1e3 / level["rps"] if level["rps"] else float("inf")
                    results.append({**level, "floor_forward_ms": round(floor_ms, 1),
                                    "overhead_pct": round((per_request / floor_ms - 1) * 100, 1)})
                swaps = _swap_phase(pool, role.url, token, payloads, max(levels), args, (v1, v2))
        finally:
            role.stop()
            engine.dispose()
    best = max(results, key=lambda r: r["concurrency"])  # saturation: the highest concurrency
    per_request_ms = 1e3 / best["rps"] if best["rps"] else float("inf")
    overhead = per_request_ms / best["floor_forward_ms"] - 1
    # the same, against the model time the server itself measured in those rounds
    inserver = per_request_ms / best["server_model_ms_mean"] - 1
    spike = (swaps["p99_during_swaps_ms"] / swaps["p99_steady_ms"]) if swaps["p99_steady_ms"] else float("nan")
    return {
        "config": {"items": args.items, "duration_s": args.duration, "device": str(ranker.device),
                   "quantization": ranker.base.quantization, "max_seq_len": s.model.max_seq_len,
                   "scorer_max_batch": s.scorer.max_batch, "scorer_max_wait_ms": s.scorer.max_wait_ms},
        "levels": results,
        "saturation": {"concurrency": best["concurrency"], "rps": best["rps"],
                       "ms_per_request": round(per_request_ms, 2),
                       "floor_rps": round(1e3 / best["floor_forward_ms"], 2),
                       "overhead_pct": round(overhead * 100, 1),
                       "overhead_vs_server_model_pct": round(inserver * 100, 1)},
        "swap": {**swaps, "p99_ratio": round(spike, 2)},
        "targets": {"overhead_under_15pct": overhead < TARGET_OVERHEAD,
                    "swap_visible_under_1s": bool(swaps["visible_ms_max"] is not None
                                                  and swaps["visible_ms_max"] < TARGET_SWAP_S * 1e3),
                    "no_spike_over_2x_p99": bool(spike <= TARGET_SPIKE)},
    }
