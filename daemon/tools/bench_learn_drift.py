"""`ranktune bench learn --drift`: the no-forgetting protocol (see `run_drift`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from daemon.tools.bench_learn_models import (
    BenchScoring,
    ScoreFn,
    estimate_curve,
    paired_gain,
    split_overrides,
    train_overrides,
)
from daemon.tools.bench_learn_proxy import ProxyModel
from daemon.tools.serving_quality import judged_ndcg

__all__ = ["run_drift"]

log = logging.getLogger("bench_learn")


def _fit(scoring: BenchScoring, opts: dict[str, Any], cfg: Any, name: str, data: Any, curve: Any, init: Any
         ) -> tuple[ScoreFn, Any]:
    """Train a candidate (warm-started from `init`, a handle returned by an earlier call, when given);
    returns its scorer and its handle (the proxy model, or the adapter's name)."""
    import torch

    from adapters.training import train

    ranker = scoring.ranker
    if opts["model"] == "proxy":
        model = ProxyModel(scoring.embeddings)
        if init is not None:
            with torch.no_grad():
                model.a.copy_(init.a)
                model.v.copy_(init.v)
        model.fit(data, cfg, curve.values)
        return model.score, model
    state = None if init is None else ranker.adapter_state(init)
    scale = None if init is None else ranker.residual_scale(init)
    train(ranker, data, cfg, adapter_name=name, propensity=curve.values, init_state=state, init_scale=scale)
    return scoring.adapter(name), name


def _judged(shop: Any, opts: dict[str, Any], models: dict[str, ScoreFn]
            ) -> dict[str, Any]:
    """Mean ground-truth NDCG@10 of each model on unseen post-drift queries, split into the categories
    the drift changed and those it left unchanged, on broad judged sets (`drifted_*`, `unchanged_*`) and
    on the pages the shop retrieves (`served_drifted_*`, `served_unchanged_*`). `*_new_vs_old` is the new
    champion's mean gain over the old one, with its standard error (`*_new_vs_old_se`)."""
    n = opts["judged_queries"] * 2
    sets = {"": shop.judgements(n, opts["candidates"], phase="post"),
            "served_": shop.served_judgements(n, phase="post")}
    out: dict[str, Any] = {}
    for prefix, judged in sets.items():
        for label in ("drifted", "unchanged"):
            js = [j for j in judged if (j["intent"]["category"] in shop.drifted) == (label == "drifted")]
            per = {who: np.asarray(judged_ndcg(fn, js), dtype=np.float64) for who, fn in models.items()}
            for who, vals in per.items():
                out[f"{prefix}{label}_{who}"] = float(vals.mean()) if js else None
            gain, se = paired_gain(per["new_champion"], per["champion"]) if js else (None, None)
            out[f"{prefix}{label}_new_vs_old"] = gain
            out[f"{prefix}{label}_new_vs_old_se"] = se if len(js) > 1 else None
            out[f"{prefix}{label}_n"] = len(js)
    return out


def _configs(opts: dict[str, Any], seed: int, n_pos: int) -> tuple[Any, Any, Any]:
    """(gate, split, train) configs of the protocol: warm start with replay, a regression sample, IPS."""
    from adapters.config import GateConfig, SplitConfig, TrainConfig

    split_cfg = SplitConfig(holdout_fraction=0.25, regression_fraction=0.15, replay_ratio=0.5, seed=seed,
                            **split_overrides(opts))
    cfg = TrainConfig(epochs=opts["epochs"], learning_rate=opts["learning_rate"],
                      max_items_per_group=n_pos, min_groups=10, max_seconds=1800, seed=seed,
                      debias="ips", ips_max_weight=opts["ips_max_weight"], residual_scale=opts["residual_scale"],
                      **train_overrides(opts))
    return GateConfig(), split_cfg, cfg


def _gate(candidate: ScoreFn, champion: ScoreFn, splits: Any, curve: Any, gate_cfg: Any, seed: int, *,
          regression: bool) -> Any:
    """The daemon's gate on `splits`: IPS-NDCG under `curve` on the holdout (and, with `regression`, on the
    regression sample when there is one), and the off-page check."""
    from adapters.gate import OffpageHoldout, decide
    from adapters.ranking_metrics import evaluate_groups

    def ips(fn: ScoreFn, groups: Sequence[Any]) -> list[float]:
        return evaluate_groups(fn, groups, propensity=curve.values).per_group_ndcg

    reg = regression and bool(splits.regression)
    return decide(ips(candidate, splits.holdout), ips(champion, splits.holdout),
                  ips(candidate, splits.regression) if reg else None, ips(champion, splits.regression) if reg else None,
                  gate_cfg, seed=seed,
                  **OffpageHoldout.decide_args(OffpageHoldout.build(splits, gate_cfg, seed), candidate, champion))


def run_drift(scoring: BenchScoring, spec: Any, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    """No forgetting: champion trained before a drift, new champion after it (warm start, replay, the
    spread regression sample, the fair gate). Judged on unseen post-drift queries, split into the
    categories whose taste the drift changed and those it left unchanged."""
    from dataclasses import replace

    from adapters.dataset import build_groups, split
    from daemon.tools.shops import FamilyShop

    t0 = time.monotonic()
    spec = replace(spec, drift_categories=0.5)
    shop = FamilyShop(spec, seed)
    n_pos = spec.page_size
    gate_cfg, split_cfg, cfg = _configs(opts, seed, n_pos)

    zero_shot = scoring.zero_shot

    # phase 1: pre-drift logs, the first champion
    pre_events = list(shop.traffic(opts["log_pages"], order=zero_shot, phase="pre"))
    pre_groups = build_groups(pre_events, lambda _: None)
    curve1 = estimate_curve(pre_groups, n_pos, zero_shot, opts)
    window1 = pre_groups[-opts["train_pages"]:]
    s1 = split(window1, split_cfg)
    cand1, handle1 = _fit(scoring, opts, cfg, f"d-{spec.name}-{seed}-1"[:60], s1, curve1, None)
    g1 = _gate(cand1, zero_shot, s1, curve1, gate_cfg, seed, regression=False)
    champion = cand1 if g1.passed else zero_shot
    champ_ref = handle1 if g1.passed else None

    # phase 2: post-drift logs ordered by the champion; a new candidate warm-started from it
    post_events = list(shop.traffic(opts["log_pages"] // 2, order=champion, phase="post",
                                    start=pre_events[-1]["ts"]))
    post_groups = build_groups(post_events, lambda _: None)
    curve2 = estimate_curve(post_groups, n_pos, zero_shot, opts)
    window2 = post_groups[-opts["train_pages"]:]
    s2 = split(window2, split_cfg, previous=window1)
    cand2, _ = _fit(scoring, opts, cfg, f"d-{spec.name}-{seed}-2"[:60], s2, curve2, champ_ref)
    g2 = _gate(cand2, champion, s2, curve2, gate_cfg, seed, regression=True)
    new_champion = cand2 if g2.passed else champion

    models = {"zero_shot": zero_shot, "champion": champion, "candidate": cand2, "new_champion": new_champion}
    out = {"shop": spec.name, "seed": seed, "model": opts["model"], "drifted_categories": sorted(shop.drifted),
           "gate1": g1.passed, "gate2": g2.passed, "gate2_regression_delta": g2.regression_delta,
           "n_regression": len(s2.regression), "n_replay": s2.replay_count,
           "propensity_methods": [curve1.method, curve2.method], **_judged(shop, opts, models),
           "total_s": round(time.monotonic() - t0, 1)}
    log.info("drift %s seed %d: %s", spec.name, seed, json.dumps(out))
    return out


def drift_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The no-forgetting table (README "Learning across shops"): per shop, how often each gate promoted, mean
    broad-set NDCG@10 of zero-shot / champion / new champion on drifted and unchanged queries, and the new
    champion's change on unchanged queries (broad sets, served pages; worst seed in brackets)."""
    by_shop: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_shop.setdefault(r["shop"], []).append(r)
    lines = ["| shop | 1st promoted | 2nd promoted | drifted: zero-shot / champion / new champion | unchanged: "
             "zero-shot / champion / new champion | unchanged, new - old champion (worst seed) | served pages, "
             "unchanged: new - old (worst seed) |", "|---|---|---|---|---|---|---|"]
    for shop, rs in by_shop.items():
        def mean(key: str, rs: Sequence[dict[str, Any]] = rs) -> float:
            return float(np.mean([r[key] for r in rs]))

        def change(key: str, rs: Sequence[dict[str, Any]] = rs) -> str:
            return f"{mean(key):+.4f} ({min(r[key] for r in rs):+.4f})"

        scores = {part: " / ".join(f"{mean(f'{part}_{m}'):.3f}" for m in ("zero_shot", "champion", "new_champion"))
                  for part in ("drifted", "unchanged")}
        n = len(rs)
        lines.append(f"| {shop} | {sum(r['gate1'] for r in rs)}/{n} | {sum(r['gate2'] for r in rs)}/{n} | "
                     f"{scores['drifted']} | {scores['unchanged']} | {change('unchanged_new_vs_old')} | "
                     f"{change('served_unchanged_new_vs_old')} |")
    return "\n".join(lines) + "\n"
