"""`bench learn`: does learning from clicks help on shops the defaults were not tuned on?

For each shop of the family (`daemon.tools.shops.FAMILY`, or `--shops`) and each seed: simulate click logs
under the shop's logging policy (random, lexical or closed loop: the base model orders the pages, as the
live champion would), estimate the position bias from all logged pages (`adapters.propensity.estimate`),
train on the newest pages, and compare learners on ground-truth NDCG@10 of unseen queries:

* `zero-shot`: the base model (the champion before any promotion);
* `naive`: clicks as labels, click-NDCG for early stopping (`debias="none"`);
* `corrected`: IPS-weighted listwise loss and IPS-NDCG early stopping with the estimated curve;
* `ceiling`: the same pages with their true grades as labels (full information).

Each trained candidate goes through the gate against zero-shot on the click holdout, scored with the
position-debiased IPS-NDCG (`fair`) and, for comparison, with raw click NDCG (`raw`). `promoted` is
what the daemon would serve: the corrected candidate if the fair gate passes it, else zero-shot.

Writes JSON (stdout; `--jsonl` appends each shop and seed as it finishes) and a markdown table (`--markdown`).
Runs as `ranktune bench learn --shops all --seeds 1,2,3` (the JSON result, `--out FILE` writes it too; the
table is its `table` field) or `python -m daemon.tools.bench_learn --shops all --seeds 1,2,3`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "markdown", "run", "run_one"]

from daemon.tools.bench_learn_drift import drift_markdown, run_drift
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

log = logging.getLogger("bench_learn")

LEARNERS = ("zero-shot", "naive", "corrected", "ceiling")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shops", default="all", help="Comma-separated family shop names, or all (default).")
    p.add_argument("--seeds", default="1,2,3", help="Comma-separated seeds (default %(default)s).")
    p.add_argument("--log-pages", type=int, default=1500, help="Logged pages for propensity estimation.")
    p.add_argument("--train-pages", type=int, default=200, help="Newest pages used for training (+ holdout).")
    p.add_argument("--judged-queries", type=int, default=200,
                   help="Unseen judged queries per shop, for each ground truth (broad sets and served pages).")
    p.add_argument("--candidates", type=int, default=20, help="Judged items per unseen query.")
    p.add_argument("--eta", type=float, default=None, help="Override every shop's examination power.")
    p.add_argument("--policy", default=None, help="Override every shop's logging policy (random|lexical|closed).")
    p.add_argument("--explore-rate", type=float, default=None, help="Override the share of shuffled pages.")
    p.add_argument("--propensity", default="auto", help="auto|randomized|harvested|regression_em|true.")
    p.add_argument("--min-slot-repeats", type=float, default=None,
                   help="auto takes harvesting over regression EM only when its (query, item) pairs were seen this "
                        "often on average (default: the daemon's, adapters.propensity.MIN_SLOT_REPEATS; 0: "
                        "harvesting whenever it has the clicks, as before stop 29).")
    p.add_argument("--learners", default=",".join(LEARNERS[1:]), help="Trained learners (default %(default)s).")
    p.add_argument("--quantization", default="nf4")
    p.add_argument("--max-seq-len", type=int, default=48)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=None,
                   help="Steps between holdout evaluations (default: the daemon's, TrainConfig.eval_every_steps). "
                        "Early stopping waits TrainConfig.patience evaluations, as the daemon does.")
    p.add_argument("--ips-max-weight", type=float, default=10.0)
    p.add_argument("--selection-fraction", type=float, default=None,
                   help="Share of the train pages, the newest before the holdout, that early stopping reads instead "
                        "of the holdout (default: the daemon's, SplitConfig.selection_fraction).")
    p.add_argument("--random-negatives", type=int, default=None,
                   help="Off-page negatives per training group (default: the daemon's, TrainConfig.random_negatives).")
    p.add_argument("--model", default="adapter", choices=("adapter", "proxy"),
                   help="adapter: LoRA + head (the daemon's learner); proxy: a head on frozen embeddings (cheap).")
    p.add_argument("--residual-scale", default="fixed", choices=("fixed", "learn"))
    p.add_argument("--drift", action="store_true", help="Run the no-forgetting protocol (run_drift) instead.")
    p.add_argument("--jsonl", default=None, help="Append each result here as a JSON line, as it runs.")
    p.add_argument("--markdown", default=None, help="Write the markdown table here.")


def _truth_groups(events: Sequence[dict[str, Any]]) -> list[Any]:
    """The same pages, labelled with the hidden grade of every shown item (full information)."""
    from adapters.dataset import ACTION_GRADES, build_groups

    names = {g: a for a, g in ACTION_GRADES.items()}
    rows = [{**e, "action": names[int(e["grade"])]} for e in events if e["action"] == "impression"]
    return build_groups(rows, lambda _: None)


def _curve(groups: Sequence[Any], true_curve: Sequence[float], zero_shot: ScoreFn,
           opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The propensity curve the corrected learner uses, estimated from the logs by `opts["propensity"]` or
    the simulator's own (`true`, normalized to position 1), and its record for the result (estimated and
    true curves, the largest relative error over positions 1 to 10)."""
    from adapters import propensity as prop

    if opts["propensity"] == "true":
        curve = prop.PropensityCurve(tuple(v / true_curve[0] for v in true_curve), "true", 0, 0)
    else:
        curve = estimate_curve(groups, len(true_curve), zero_shot, opts, opts["propensity"])
    err = prop.max_relative_error(curve.values, true_curve, min(10, len(true_curve)))
    return curve, {"method": curve.method, "estimated": [round(v, 4) for v in curve.values[:10]],
                   "true": [round(v / true_curve[0], 4) for v in true_curve[:10]],
                   "max_rel_error_1_10": round(err, 4), "n_clicks": curve.n_clicks}


def _train_learner(scoring: BenchScoring, learner: str, name: str, data: Any, opts: dict[str, Any], *, seed: int,
                   n_pos: int, curve: Any, holdout: Sequence[Any], judged: Sequence[dict[str, Any]],
                   zs_gt: Sequence[float], served: Sequence[dict[str, Any]], zs_served: Sequence[float],
                   fair_zero: Sequence[float], raw_zero: Sequence[float], offpage: Any,
                   offpage_zero: ScoreFn) -> dict[str, Any]:
    """Train one learner on `data`, then judge it: ground truth on unseen queries, and the gate against
    zero-shot on the click holdout, debiased (`fair`) and raw, both with the off-page check (`offpage`, a
    `gate.OffpageHoldout` or None; `offpage_zero`: zero-shot with its scores kept, `_memo`, shared by the
    learners). Returns its row of the table."""
    from adapters.config import GateConfig, TrainConfig
    from adapters.gate import OffpageHoldout, decide
    from adapters.ranking_metrics import evaluate_groups
    from adapters.training import train

    cfg = TrainConfig(epochs=opts["epochs"], learning_rate=opts["learning_rate"], residual_scale=opts["residual_scale"],
                      max_items_per_group=n_pos, min_groups=10,
                      max_seconds=1800, seed=seed, debias="ips" if learner == "corrected" else "none",
                      ips_max_weight=opts["ips_max_weight"], **train_overrides(opts))
    used_curve = curve.values if learner == "corrected" else None
    ranker = scoring.ranker
    if opts["model"] == "proxy":
        proxy = ProxyModel(scoring.embeddings)
        fit = proxy.fit(data, cfg, used_curve)
        res_s, steps, best_step, scale = fit["seconds"], fit["steps"], fit["best_step"], fit["residual_scale"]
        cand: ScoreFn = proxy.score
    else:
        res = train(ranker, data, cfg, adapter_name=name, propensity=used_curve)
        res_s, steps, best_step, scale = res.seconds, res.steps, res.best_step, res.residual_scale
        cand = scoring.adapter(name)

    gt = judged_ndcg(cand, judged)
    gt_served = judged_ndcg(cand, served)
    gate_cfg = GateConfig()
    off_cand = _memo(cand)  # the off-page groups, scored once for both measures
    off = OffpageHoldout.decide_args(offpage, off_cand, offpage_zero)
    fair = decide(evaluate_groups(cand, holdout, propensity=curve.values, max_weight=opts["ips_max_weight"]
                                  ).per_group_ndcg, fair_zero, None, None, gate_cfg, seed=seed, **off)
    raw = decide(evaluate_groups(cand, holdout).per_group_ndcg, raw_zero, None, None, gate_cfg, seed=seed, **off)
    if opts["model"] != "proxy":
        ranker.delete_adapter(name)
    gain, se = paired_gain(gt, zs_gt)
    served_gain, served_se = paired_gain(gt_served, zs_served)
    return {
        "gt_ndcg10": float(np.mean(gt)), "gt_gain": gain, "gt_gain_se": se,
        "gt_served_ndcg10": float(np.mean(gt_served)), "gt_served_gain": served_gain, "gt_served_gain_se": served_se,
        "fair_gate": fair.passed, "fair_gain": fair.ndcg_gain, "fair_p": fair.bootstrap_p_gain,
        "offpage_delta": fair.offpage_delta, "offpage_pairs_delta": _pairs_delta(offpage, off_cand, offpage_zero),
        "min_detectable_gain": fair.min_detectable_gain,
        "raw_gate": raw.passed, "raw_gain": raw.ndcg_gain,
        "train_s": round(res_s, 1), "steps": steps, "best_step": best_step, "residual_scale": scale,
    }


def _memo(score_fn: ScoreFn) -> ScoreFn:
    """`score_fn` with its scores kept by (query, texts)."""
    seen: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def scored(query: str, texts: Sequence[str]) -> np.ndarray:
        key = (query, tuple(texts))
        if key not in seen:
            seen[key] = np.asarray(score_fn(query, texts), dtype=np.float64)
        return seen[key]

    return scored


def _pairs_delta(offpage: Any, candidate: ScoreFn, zero_shot: ScoreFn) -> float | None:
    """Candidate minus zero-shot in the share of (clicked, off-page) item pairs ordered right: the off-page
    check's measure before it read NDCG@10 (reported, not gated)."""
    from adapters.ranking_metrics import offpage_accuracy

    if offpage is None:
        return None
    cand, zero = (np.asarray(offpage_accuracy(fn, offpage.groups, offpage.n_page)) for fn in (candidate, zero_shot))
    both = ~(np.isnan(cand) | np.isnan(zero))
    return float((cand - zero)[both].mean()) if both.any() else None


def _promoted(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the daemon would serve: the corrected candidate if the fair gate passed it, else zero-shot."""
    promoted = rows.get("corrected", {})
    won = bool(promoted.get("fair_gate"))
    prom_gt = promoted["gt_ndcg10"] if won else rows["zero-shot"]["gt_ndcg10"]
    return {"learner": "corrected" if won else "zero-shot", "gt_ndcg10": prom_gt,
            "gt_gain": prom_gt - rows["zero-shot"]["gt_ndcg10"],
            "gt_gain_se": promoted["gt_gain_se"] if won else 0.0,
            "gt_served_gain": promoted["gt_served_gain"] if won else 0.0,
            "gt_served_gain_se": promoted["gt_served_gain_se"] if won else 0.0}


def run_one(scoring: BenchScoring, spec: Any, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    """One shop and seed: logs, propensity, learners, gates, ground truth. Returns a JSON-ready dict."""
    from adapters.config import GateConfig, SplitConfig
    from adapters.dataset import build_groups, split
    from adapters.gate import OffpageHoldout
    from adapters.ranking_metrics import evaluate_groups
    from daemon.tools.shops import FamilyShop

    t0 = time.monotonic()
    shop = FamilyShop(spec, seed)
    zero_shot = scoring.zero_shot
    events = list(shop.traffic(opts["log_pages"], order=zero_shot))
    groups = build_groups(events, lambda _: None)
    sim_s = time.monotonic() - t0
    n_pos = spec.page_size
    curve, curve_record = _curve(groups, shop.spec.clicks.curve(n_pos), zero_shot, opts)

    window = groups[-opts["train_pages"]:]
    keys = {g.key for g in window}
    split_cfg = SplitConfig(holdout_fraction=0.25, regression_fraction=0.0, replay_ratio=0.0, seed=seed,
                            **split_overrides(opts))
    splits = split(window, split_cfg)
    truth = [g for g in _truth_groups(events) if g.key in keys]
    truth_splits = split(truth, split_cfg)
    judged = shop.judgements(opts["judged_queries"], opts["candidates"])
    served = shop.served_judgements(opts["judged_queries"])

    rows: dict[str, dict[str, Any]] = {}
    zs_gt = judged_ndcg(zero_shot, judged)
    zs_served = judged_ndcg(zero_shot, served)
    rows["zero-shot"] = {"gt_ndcg10": float(np.mean(zs_gt)), "gt_served_ndcg10": float(np.mean(zs_served)),
                         "train_s": 0.0}
    fair_zero = evaluate_groups(zero_shot, splits.holdout, propensity=curve.values,
                                max_weight=opts["ips_max_weight"]).per_group_ndcg
    raw_zero = evaluate_groups(zero_shot, splits.holdout).per_group_ndcg
    offpage = OffpageHoldout.build(splits, GateConfig(), seed)
    offpage_zero = _memo(zero_shot)  # every learner is compared with it on the same off-page groups
    for learner in opts["learners"]:
        data = truth_splits if learner == "ceiling" else splits
        rows[learner] = _train_learner(scoring, learner, f"b-{spec.name}-{seed}-{learner}"[:60], data, opts, seed=seed,
                                       n_pos=n_pos, curve=curve, holdout=splits.holdout, judged=judged, zs_gt=zs_gt,
                                       served=served, zs_served=zs_served, fair_zero=fair_zero, raw_zero=raw_zero,
                                       offpage=offpage, offpage_zero=offpage_zero)
        log.info("%s seed %d %s: gt %.4f (zero-shot %.4f) fair gate %s raw gate %s, %.0fs", spec.name, seed, learner,
                 rows[learner]["gt_ndcg10"], rows["zero-shot"]["gt_ndcg10"], rows[learner]["fair_gate"],
                 rows[learner]["raw_gate"], rows[learner]["train_s"])
    return {
        "shop": spec.name, "seed": seed, "domain": spec.domain, "policy": spec.policy, "eta": spec.clicks.eta,
        "rule": spec.rule, "n_items": spec.n_items, "page_size": spec.page_size,
        "n_log_pages": opts["log_pages"], "n_groups": len(groups), "n_train": len(splits.train),
        "n_holdout": len(splits.holdout), "n_judged": len(judged), "n_served": len(served),
        "propensity": curve_record,
        "learners": rows,
        "promoted": _promoted(rows),
        "model": opts["model"], "simulate_s": round(sim_s, 1), "total_s": round(time.monotonic() - t0, 1),
    }


def _mean_cell(cells: Sequence[dict[str, Any]], key: str) -> str:
    """Mean of `key` over the cells that have it (older result files lack the served-page columns)."""
    vals = [c[key] for c in cells if key in c]
    return f"{statistics.mean(vals):+.4f}" if vals else "n/a"


def _losses(rs: Sequence[dict[str, Any]]) -> str:
    """Promotions whose ground-truth gain is below zero by more than 2 standard errors, broad/served."""
    prom = [r["promoted"] for r in rs if r["promoted"]["learner"] != "zero-shot"]

    def lost(key: str) -> int:
        return sum(p.get(key, 0.0) + 2 * p.get(f"{key}_se", 0.0) < 0 for p in prom)

    return f"{lost('gt_gain')}/{lost('gt_served_gain')} of {len(prom)}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """One row per shop and learner: mean over seeds of ground-truth NDCG@10 and gains, gate passes; the
    promoted row counts promotions that lost significantly (broad judged sets / served pages)."""
    out = ["| shop | policy | eta | learner | GT NDCG@10 | gain vs zero-shot | served-page gain | fair gate | raw gate "
           "| train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    shops: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        shops.setdefault(r["shop"], []).append(r)
    for shop, rs in shops.items():
        for learner in LEARNERS:
            cells = [r["learners"][learner] for r in rs if learner in r["learners"]]
            if not cells:
                continue
            gt = statistics.mean(c["gt_ndcg10"] for c in cells)
            gain = "" if learner == "zero-shot" else f"{statistics.mean(c['gt_gain'] for c in cells):+.4f}"
            served = "" if learner == "zero-shot" else _mean_cell(cells, "gt_served_gain")
            fair = "" if learner == "zero-shot" else f"{sum(c['fair_gate'] for c in cells)}/{len(cells)}"
            raw = "" if learner == "zero-shot" else f"{sum(c['raw_gate'] for c in cells)}/{len(cells)}"
            secs = statistics.mean(c["train_s"] for c in cells)
            out.append(f"| {shop} | {rs[0]['policy']} | {rs[0]['eta']:g} | {learner} | {gt:.4f} | {gain} | {served} | "
                       f"{fair} | {raw} | {secs:.0f} |")
        prom = [r["promoted"] for r in rs]
        out.append(f"| {shop} | | | **promoted** | {statistics.mean(p['gt_ndcg10'] for p in prom):.4f} | "
                   f"{statistics.mean(p['gt_gain'] for p in prom):+.4f} | {_mean_cell(prom, 'gt_served_gain')} | "
                   f"lost: {_losses(rs)} | | |")
    out += ["", "| shop | seeds | propensity method | max rel. error pos 1-10 | estimated (1..5) | true (1..5) |",
            "|---|---|---|---|---|---|"]
    for shop, rs in shops.items():
        errs = [r["propensity"]["max_rel_error_1_10"] for r in rs]
        out.append(f"| {shop} | {len(rs)} | {rs[0]['propensity']['method']} | "
                   f"{statistics.mean(errs):.3f} (max {max(errs):.3f}) | "
                   f"{', '.join(f'{v:.2f}' for v in rs[0]['propensity']['estimated'][:5])} | "
                   f"{', '.join(f'{v:.2f}' for v in rs[0]['propensity']['true'][:5])} |")
    return "\n".join(out) + "\n"


def _specs(args: argparse.Namespace) -> list[Any]:
    """The family's shops that `--shops` names, with the `--eta`, `--policy` and `--explore-rate` overrides."""
    from dataclasses import replace

    from daemon.tools.shop_specs import family_specs

    specs = family_specs(args.shops)
    changed = []
    for s in specs:
        ch: dict[str, Any] = {}
        if args.eta is not None:
            ch["clicks"] = replace(s.clicks, eta=args.eta)
        if args.policy is not None:
            ch["policy"] = args.policy
            ch["retrieve"] = max(s.retrieve, 16) if args.policy == "closed" else s.page_size
        if args.explore_rate is not None:
            ch["explore_rate"] = args.explore_rate
        changed.append(replace(s, **ch) if ch else s)
    return changed


def run(args: argparse.Namespace, settings: Any = None) -> dict[str, Any]:
    """Every shop x seed (`ranktune bench learn`, `daemon.commands.bench`): options, results and the markdown
    table (`table`; none for `--drift`). `settings` (optional) gives the base model's path."""
    from adapters.config import LoraSpec, ModelSpec
    from adapters.ranker import Ranker

    for noisy in ("adapters.training", "adapters.base", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    specs = _specs(args)
    opts = {"log_pages": args.log_pages, "train_pages": args.train_pages, "judged_queries": args.judged_queries,
            "candidates": args.candidates, "propensity": args.propensity, "min_slot_repeats": args.min_slot_repeats,
            "learning_rate": args.learning_rate, "epochs": args.epochs, "eval_every": args.eval_every,
            "ips_max_weight": args.ips_max_weight, "random_negatives": args.random_negatives,
            "selection_fraction": args.selection_fraction,
            "learners": [x.strip() for x in args.learners.split(",") if x.strip()], "model": args.model,
            "residual_scale": args.residual_scale, "max_seq_len": args.max_seq_len, "quantization": args.quantization}
    t0 = time.monotonic()
    path = settings.model.path if settings is not None else None
    model_spec = ModelSpec(path=path, quantization=args.quantization, device="cpu", max_seq_len=args.max_seq_len)
    scoring = BenchScoring(Ranker.load(model_spec, LoraSpec(r=8, alpha=16, dropout=0.0)), model_spec)
    results = []
    for spec in specs:
        for seed in [int(x) for x in args.seeds.split(",") if x.strip()]:
            r = run_drift(scoring, spec, seed, opts) if args.drift else run_one(scoring, spec, seed, opts)
            results.append(r)
            if args.jsonl:
                with Path(args.jsonl).open("a") as f:
                    f.write(json.dumps(r) + "\n")
    table = drift_markdown(results) if args.drift else markdown(results)
    if table is not None and args.markdown:
        Path(args.markdown).write_text(table)
    return {"options": opts, "wall_s": round(time.monotonic() - t0, 1), "results": results, "table": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--out", dest="jsonl", default=None, help="Same as --jsonl (kept for older commands).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    doc = {"benchmark": "learn", "argv": sys.argv[1:] if argv is None else argv, **run(args)}
    table = doc.pop("table")
    sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    if table is not None:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
