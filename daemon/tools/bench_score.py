"""Scoring throughput and latency over HTTP per serving path, beside the raw forward; hot-swap latency.

Starts a real serve role (uvicorn on a free port, fresh SQLite, two synthetic adapter versions, champion
v0001, no broker) once per `--serving-paths` entry, back to back, and drives `POST /v1/score` with
`--items`-item requests from N client threads (in a separate process, so they do not share the server's GIL)
for `--duration` seconds per concurrency level. The floor is the raw forward of the same path (the served
version's scoring function called directly, `Scorer.direct`) on the same batches, measured right before each
level while the scorer is idle. Overhead at saturation (the highest concurrency) is `(1 / requests-per-second)
/ floor - 1`; `overhead_vs_server_model_pct` compares with the model time the server itself measured in those
rounds instead, which is immune to drift in the machine's speed. Ranking quality: NDCG@10 of v0001 on the
simulator's ground truth (`serving_quality.judgements`), and its delta against the `quantized` path.
The swap phase promotes v0002/v0001 alternately over HTTP while the highest concurrency runs and reports the
promote call's latency, requests sent after a promote's 2xx that were still answered by the old version
(read-your-writes: must be 0), failed requests, and the p99 of requests that overlapped a promote against
the steady p99.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr

from daemon.settings import Settings
from daemon.tools.bench_load import Record, drive
from storage import registry
from storage.db import make_engine, session_scope, upgrade

TARGET_OVERHEAD = 0.10
TARGET_SWAP_S = 1.0
TARGET_SPIKE = 1.5

_NOUNS = ("shoe", "jacket", "tent", "backpack", "kettle", "lamp", "sofa", "watch", "knife", "scarf", "boots")
_ADJ = ("red", "blue", "waterproof", "leather", "wool", "lightweight", "vintage", "compact", "insulated", "linen")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", default="1,2,4,8", help="Client threads per level, comma-separated.")
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per concurrency level (default 10).")
    p.add_argument("--items", type=int, default=50, help="Items per request (default 50).")
    p.add_argument("--swaps", type=int, default=6, help="Promotes during the swap phase (default 6).")
    p.add_argument("--swap-interval", type=float, default=2.0, help="Seconds between two promotes (default 2).")
    p.add_argument("--seed", type=int, default=3, help="Payload seed.")
    p.add_argument("--serving-paths", default="quantized,merged-int8,merged-bf16,merged-fp32",
                   help="Serving paths to run, back to back, comma-separated (default: all four).")
    p.add_argument("--ndcg-queries", type=int, default=40,
                   help="Simulator queries per phase for NDCG@10 (0: skip; default 40, 30 items each).")


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


def _floor(direct: Callable[[list[tuple[str, str]]], np.ndarray], payloads: list[dict[str, Any]],
           repeats: int = 12) -> list[float]:
    """Raw forward times (ms) of one request's batch on the served model, outside serving."""
    times = []
    for i in range(repeats + 3):
        p = payloads[i % len(payloads)]
        pairs = [(p["query"], it["text"]) for it in p["items"]]
        t0 = time.perf_counter()
        direct(pairs)
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _stale_after_answer(recs: list[Record], calls: list[tuple[float, float, str]]) -> int:
    """Responses from a version other than the last promote answered before the request was sent (or one
    promoted after it, whose call began before the response): what read-your-writes forbids."""
    stale = 0
    for sent, answered, status, version, _ in recs:
        last = max((k for k, c in enumerate(calls) if c[1] < sent), default=None)
        if status != 200 or last is None:
            continue
        allowed = {calls[last][2]} | {c[2] for c in calls[last + 1:] if c[0] < answered}
        stale += version not in allowed
    return stale


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
    recs = sorted(load.result(), key=lambda r: r[1])
    windows = [(t0, t1) for t0, t1, _ in calls]
    during = [(r[1] - r[0]) * 1e3 for r in recs if r[2] == 200 and any(r[0] <= e and r[1] >= s for s, e in windows)]
    steady = [(r[1] - r[0]) * 1e3 for r in recs if r[2] == 200 and not any(r[0] <= e + 1 and r[1] >= s
                                                                             for s, e in windows)]
    promote_ms = [round((b - a) * 1e3, 1) for a, b, _ in calls]
    return {"swaps": len(calls), "promote_call_ms": promote_ms, "promote_call_ms_max": max(promote_ms, default=None),
            "stale_after_answer": _stale_after_answer(recs, calls),
            "requests": len(recs), "errors": sum(1 for r in recs if r[2] != 200),
            "p99_during_swaps_ms": round(_pct(during, 99), 1), "max_during_swaps_ms": round(max(during), 1)
            if during else None, "p99_steady_ms": round(_pct(steady, 99), 1)}


def _serve_path(path: str, s: Settings, engine: Any, versions: tuple[str, str], pool: ProcessPoolExecutor,
                args: argparse.Namespace, token: str, judged: list[dict[str, Any]]) -> dict[str, Any]:
    """One serving path: quality, the concurrency levels, and the swap phase, on a fresh role and model."""
    from adapters.ranker import Ranker
    from daemon.serving.role import ServeRole
    from daemon.tools.serving_quality import per_query_ndcg

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    payloads = _payloads(16, args.items, args.seed)
    ranker = Ranker.load(s.model, s.lora, batch_size=s.scorer.max_batch)
    t0 = time.monotonic()
    role = ServeRole(s.replace(scorer_serving_path=path), engine=engine, ranker=ranker, control=False).start()
    startup_s = time.monotonic() - t0
    assert role.scorer is not None
    results = []
    try:
        direct = role.scorer.direct()
        ndcg = per_query_ndcg(direct, judged) if judged else np.zeros(0)
        for n in levels:
            floor_ms = statistics.median(_floor(direct, payloads))
            level = _level(pool, role.url, payloads, n, args.duration, args.items)
            per_request = 1e3 / level["rps"] if level["rps"] else float("inf")
            results.append({**level, "floor_forward_ms": round(floor_ms, 1),
                            "overhead_pct": round((per_request / floor_ms - 1) * 100, 1)})
        swaps = _swap_phase(pool, role.url, token, payloads, max(levels), args, versions)
    finally:
        role.stop()
    return _summary(path, results, swaps, ndcg, startup_s, ranker)


def _summary(path: str, results: list[dict[str, Any]], swaps: dict[str, Any], ndcg: np.ndarray, startup_s: float,
             ranker: Any) -> dict[str, Any]:
    best = max(results, key=lambda r: r["concurrency"])  # saturation: the highest concurrency
    per_request_ms = 1e3 / best["rps"] if best["rps"] else float("inf")
    overhead = per_request_ms / best["floor_forward_ms"] - 1
    # the same, against the model time the server itself measured in those rounds
    inserver = per_request_ms / best["server_model_ms_mean"] - 1
    spike = (swaps["p99_during_swaps_ms"] / swaps["p99_steady_ms"]) if swaps["p99_steady_ms"] else float("nan")
    return {
        "serving_path": path, "base_quantization": ranker.base.quantization, "startup_s": round(startup_s, 2),
        "ndcg10": round(float(ndcg.mean()), 5) if ndcg.size else None, "ndcg10_per_query": ndcg.tolist(),
        "levels": results,
        "saturation": {"concurrency": best["concurrency"], "rps": best["rps"],
                       "ms_per_request": round(per_request_ms, 2),
                       "floor_rps": round(1e3 / best["floor_forward_ms"], 2),
                       "overhead_pct": round(overhead * 100, 1),
                       "overhead_vs_server_model_pct": round(inserver * 100, 1)},
        "swap": {**swaps, "p99_ratio": round(spike, 2)},
        "targets": {"overhead_under_10pct": overhead < TARGET_OVERHEAD,
                    "promote_under_1s": bool(swaps["promote_call_ms_max"] is not None
                                             and swaps["promote_call_ms_max"] < TARGET_SWAP_S * 1e3),
                    "no_stale_after_answer": swaps["stale_after_answer"] == 0, "no_errors": swaps["errors"] == 0,
                    "p99_during_swaps_under_1_5x": bool(spike <= TARGET_SPIKE)},
    }


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from adapters.ranker import Ranker
    from daemon.tools.serving_quality import judgements
    from daemon.tools.synthetic_adapters import make_version
    from daemon.training.promotion import promote

    paths = [p.strip() for p in args.serving_paths.split(",") if p.strip()]
    token = secrets.token_hex(16)
    judged = judgements(n_queries=args.ndcg_queries, candidates=30) if args.ndcg_queries else []
    with tempfile.TemporaryDirectory(prefix="ranktune-bench-") as tmp:
        s = settings.replace(**{"storage_database_url": f"sqlite:///{Path(tmp) / 'bench.db'}",
                                "storage_artifacts_dir": Path(tmp) / "artifacts", "api_port": 0,
                                "api_host": "127.0.0.1", "api_token": SecretStr(token),
                                "api_max_items": max(settings.api.max_items, args.items)})
        engine = make_engine(s.storage.sqlalchemy_url, **s.storage.engine_options)
        upgrade(engine)
        maker = Ranker.load(s.model, s.lora, batch_size=s.scorer.max_batch)
        v1, v2 = (make_version(maker, engine=engine, artifacts_dir=s.storage.artifacts_dir, seed=k) for k in (1, 2))
        del maker
        out = []
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                for path in paths:
                    with session_scope(engine) as session:
                        on_v1 = registry.champion(session=session) == v1
                    if not on_v1:  # each path starts on v0001
                        promote(engine=engine, version=v1, actor="bench")
                    out.append(_serve_path(path, s, engine, (v1, v2), pool, args, token, judged))
        finally:
            engine.dispose()
    ref = next((r for r in out if r["serving_path"] == "quantized"), None)
    for r in out:
        if ref is not None and r["ndcg10"] is not None and ref["ndcg10"] is not None:
            r["ndcg10_delta_vs_quantized"] = round(r["ndcg10"] - ref["ndcg10"], 5)
            r["speedup_vs_quantized"] = round(r["saturation"]["rps"] / ref["saturation"]["rps"], 2)
        r.pop("ndcg10_per_query")
    import torch

    from adapters.fast import cpu_has_native_bf16, resolve_serving_path

    return {"config": {"items": args.items, "duration_s": args.duration, "device": settings.model.device,
                       "quantization": settings.model.quantization, "max_seq_len": s.model.max_seq_len,
                       "scorer_max_batch": s.scorer.max_batch, "scorer_max_wait_ms": s.scorer.max_wait_ms,
                       "ndcg_queries": len(judged), "order": paths,
                       "cpu_native_bf16": cpu_has_native_bf16(),
                       "auto_on_cpu": resolve_serving_path("auto", torch.device("cpu"))},
            "paths": out}
