"""Training speed, memory and quality for each quantization (none, int8, nf4) on the same data.

Each quantization trains in its own spawned process, so its peak process memory (ru_maxrss) is its own.
The data is one simulated shop (seeded): result pages become graded query groups exactly as in the
daemon, split by time into train and holdout. Reports model footprint, peak process memory (and peak
CUDA memory on a GPU), training pairs/s, zero-shot and trained holdout NDCG@10.

Also runs without the CLI (`python -m daemon.tools.bench_train --device cuda`), for machines that have
the ML stack but not the daemon's service dependencies.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantizations", default="none,int8,nf4", help="Comma-separated (default %(default)s).")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default RANKTUNE_MODEL_DEVICE).")
    p.add_argument("--events", type=int, default=6000, help="Simulated feedback events (default %(default)s).")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--max-groups", type=int, default=300, help="Training groups used (newest).")
    p.add_argument("--items", type=int, default=200, help="Products in the simulated shop (default %(default)s).")
    p.add_argument("--drift-at", type=float, default=None,
                   help="Simulate a drift point at this share of events and train on the post-drift pages only.")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="LoRA learning rate (default %(default)s).")
    p.add_argument("--head-lr-scales", default="10",
                   help="Comma-separated head learning-rate multipliers, one run each (default %(default)s).")
    p.add_argument("--eval-every", type=int, default=10, help="Steps between holdout evaluations.")
    p.add_argument("--max-items", type=int, default=20, help="Items kept per query group in training.")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"events": args.events, "seed": args.seed, "epochs": args.epochs, "max_seq_len": args.max_seq_len,
            "max_groups": args.max_groups, "items": args.items, "drift_at": args.drift_at,
            "learning_rate": args.learning_rate, "eval_every": args.eval_every, "max_items": args.max_items,
            "head_lr_scales": [float(x) for x in args.head_lr_scales.split(",") if x.strip()]}


def _splits(events: int, seed: int, max_groups: int, items: int, drift_at: float | None) -> Any:
    from adapters.config import SplitConfig
    from adapters.dataset import build_groups, split
    from adapters.product_text import product_text
    from daemon.tools.simulate import SimConfig, generate

    rows, texts = [], {}
    for rec in generate(SimConfig(seed=seed, n_items=items, n_events=events, drift_at=drift_at)):
        p = rec.payload
        if p is None or rec.kind == "malformed":
            continue
        if rec.kind == "catalog":
            texts[p["item_id"]] = product_text(p)
            continue
        if drift_at is not None and rec.phase != "post":
            continue
        rows.append({**p, "ts": datetime.fromisoformat(p["ts"]), "session_hash": None})
    groups = build_groups(rows, texts.get)[-max_groups:]
    return split(groups, SplitConfig(holdout_fraction=0.2, regression_fraction=0.0, replay_ratio=0.0, seed=seed))


def _one(quantization: str, head_lr_scale: float, device: str, base_model: str | None, opts: dict[str, Any],
         out: Any) -> None:
    """Child process: load, evaluate zero-shot, train, report."""
    import torch

    from adapters.config import LoraSpec, ModelSpec, TrainConfig, default_base_model
    from adapters.ranker import Ranker
    from adapters.ranking_metrics import evaluate_groups
    from adapters.training import train

    try:
        splits = _splits(opts["events"], opts["seed"], opts["max_groups"], opts["items"], opts["drift_at"])
        t0 = time.monotonic()
        spec = ModelSpec(path=Path(base_model) if base_model else default_base_model(),
                         quantization=quantization, device=device, max_seq_len=opts["max_seq_len"])
        ranker = Ranker.load(spec, LoraSpec())
        load_s = time.monotonic() - t0
        zero = evaluate_groups(lambda q, t: ranker.score(q, t, adapter=None), splits.holdout)
        cfg = TrainConfig(epochs=opts["epochs"], learning_rate=opts["learning_rate"], head_lr_scale=head_lr_scale,
                          eval_every_steps=opts["eval_every"], max_items_per_group=opts["max_items"], patience=3,
                          max_seconds=1800, min_groups=10)
        result = train(ranker, splits, cfg, adapter_name="bench")
        doc: dict[str, Any] = {
            "quantization": ranker.base.quantization, "head_lr_scale": head_lr_scale, "device": str(ranker.device),
            "load_s": round(load_s, 2),
            "model_footprint_mb": round(ranker.base.footprint_bytes / 2**20, 1),
            "peak_process_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "train_pairs_per_s": round(result.examples_per_s, 1), "train_seconds": round(result.seconds, 1),
            "steps": result.steps, "best_step": result.best_step, "n_train_groups": len(splits.train),
            "n_holdout_groups": len(splits.holdout), "zero_shot_holdout_ndcg10": round(zero.ndcg10, 4),
            "holdout_ndcg10": round(result.holdout.ndcg10, 4),
        }
        if ranker.device.type == "cuda":
            doc["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            doc["gpu"] = torch.cuda.get_device_name(0)
        out.send(doc)
    except Exception as exc:  # reported, so one quantization failing does not hide the others
        out.send({"quantization": quantization, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def measure(quantizations: list[str], device: str, base_model: str | None, opts: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = []
    for q in quantizations:
        for scale in opts["head_lr_scales"]:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_one, args=(q, scale, device, base_model, opts, child))
            proc.start()
            child.close()
            results.append(parent.recv() if parent.poll(3600)
                           else {"quantization": q, "head_lr_scale": scale, "error": "no result"})
            proc.join()
    return {"device": device, "options": opts, "results": results}


def run(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    qs = [q.strip() for q in args.quantizations.split(",") if q.strip()]
    return measure(qs, args.device or settings.model.device, settings.model.path, _options(args))


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    qs = [q.strip() for q in args.quantizations.split(",") if q.strip()]
    doc = measure(qs, args.device or "auto", os.environ.get("RANKTUNE_MODEL_PATH"), _options(args))
    sys.stdout.write(json.dumps({"benchmark": "train", **doc}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
