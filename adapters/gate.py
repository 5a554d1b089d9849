"""The promotion gate: does a candidate beat the champion on the same holdout groups?

Inputs are per-group NDCG@10 lists aligned by group (`EvalResult.per_group_ndcg` of both models on the
same groups). The first adapter is compared with the base scorer without adapter, so the champion
side is always something real. A candidate passes only when all three hold:

1. mean gain >= `min_ndcg_gain`;
2. a paired bootstrap over query groups shows a gain > 0 in at least `confidence` of the resamples
   (groups are the independent units: items of one page are not);
3. on the regression holdout (older data), the candidate loses at most `regression_tolerance`.
   The check guards what an earlier champion learned. Against the base model (`regression_enforced`
   False: it was trained on none of the shop's traffic, so a drift may have made the old clicks
   obsolete and there is nothing learned to forget), the change is reported but not enforced.
4. with `offpage_items` unclicked items of other pages added to each holdout page, the NDCG@10 that those
   items take away from the page (`ranking_metrics.offpage_ndcg_change`) grows by at most
   `offpage_tolerance`. A page holds only what retrieval found, so checks 1-3 cannot see a candidate that
   orders pages better while ranking products that match nothing above relevant ones (the LoRA adapter of
   `bench learn` did: +0.04 on served pages, -0.017 on broad judged sets). Enforced against the base
   model too.

The per-group values should be position-debiased (`ranking_metrics.evaluate_groups(..., propensity=curve)`:
IPS-NDCG per page). Raw click NDCG on pages the champion ordered rewards a candidate for copying that
order, since shoppers click the top whatever it holds (tested: such a copier passes on raw clicks and
is refused on IPS-NDCG).

Every decision also reports the smallest gain the holdout can detect: `(z(confidence) + z(power)) * SE`,
with SE the standard deviation of the bootstrap means; 2.12 SE for the defaults (a one-sided test at 90%
with 80% power). A real gain below it is more likely missed than found: collect more holdout pages.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from adapters.config import GateConfig
from adapters.dataset import NegativePool, QueryGroup, Splits
from adapters.ranking_metrics import offpage_ndcg_change

__all__ = ["GateDecision", "OffpageHoldout", "decide"]

PerGroup = Sequence[float] | np.ndarray
"""Per-group NDCG@10 values, aligned by group (a list or a numpy array)."""
ScoreFn = Callable[[str, Sequence[str]], np.ndarray]

# Resamples are drawn in chunks so memory stays at chunk * n_groups indices for big holdouts.
_CHUNK = 256


@dataclass(frozen=True)
class GateDecision:
    """The verdict with its numbers; `reasons` has one line per check, failed or passed."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    ndcg_gain: float = 0.0
    bootstrap_p_gain: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    regression_delta: float | None = None
    offpage_delta: float | None = None  # candidate - champion: change in the NDCG@10 off-page items take away
    n_groups: int = 0
    candidate_ndcg: float = 0.0
    champion_ndcg: float = 0.0
    min_detectable_gain: float = 0.0  # (z(confidence) + z(power)) * bootstrap SE of the mean gain
    bootstrap_se: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for the registry's audit row."""
        return asdict(self)


@dataclass(frozen=True)
class OffpageHoldout:
    """The holdout pages, each with `GateConfig.offpage_items` unclicked items of other pages added (seeded),
    for the off-page check: score both sides with `ndcg_change` and pass the lists to `decide`."""

    groups: list[QueryGroup]
    n_page: list[int]

    @classmethod
    def build(cls, splits: Splits, cfg: GateConfig, seed: int) -> OffpageHoldout | None:
        """The holdout of `splits`, its items added from its training and holdout pages; None when the check
        is off (`offpage_items` 0)."""
        if cfg.offpage_items <= 0:
            return None
        negatives, rng = NegativePool([*splits.train, *splits.holdout]), random.Random(f"offpage:{seed}")
        return cls([negatives.with_random_negatives(g, cfg.offpage_items, rng) for g in splits.holdout],
                   [len(g) for g in splits.holdout])

    def ndcg_change(self, score_fn: ScoreFn) -> list[float]:
        """Per page, NDCG@10 with the added items minus without them (`ranking_metrics.offpage_ndcg_change`)."""
        return offpage_ndcg_change(score_fn, self.groups, self.n_page)

    @staticmethod
    def decide_args(offpage: OffpageHoldout | None, candidate: ScoreFn, champion: ScoreFn) -> dict[str, Any]:
        """`decide`'s off-page keyword arguments: both sides' NDCG changes, or nothing when the check is off."""
        if offpage is None:
            return {}
        return {"candidate_offpage": offpage.ndcg_change(candidate), "champion_offpage": offpage.ndcg_change(champion)}


def _paired_bootstrap(diffs: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = diffs.size
    means = []
    for start in range(0, samples, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, samples - start), n))
        means.append(diffs[idx].mean(axis=1))
    return np.concatenate(means)


def _regression_check(candidate: PerGroup | None, champion: PerGroup | None, cfg: GateConfig,
                      enforced: bool) -> tuple[bool, float | None, str]:
    """(passes, mean change, reason line) of the regression holdout check."""
    if candidate is None or champion is None:
        return True, None, "ok: no regression holdout given; not checked"
    creg = np.asarray(candidate, dtype=np.float64)
    preg = np.asarray(champion, dtype=np.float64)
    if creg.shape != preg.shape:
        raise ValueError(f"regression lists are not aligned: {creg.size} vs {preg.size} groups")
    if not creg.size:
        return True, None, "ok: regression holdout is empty; not checked"
    delta = float(creg.mean() - preg.mean())
    within = delta >= -cfg.regression_tolerance
    tag = ("ok" if within else "fail") if enforced else "info"
    reason = (f"{tag}: regression holdout NDCG@10 change {delta:+.4f} "
              f"({'within' if within else 'beyond'} tolerance {cfg.regression_tolerance:.4f}, {creg.size} groups)"
              + ("" if enforced else "; not enforced against the base model"))
    return within or not enforced, delta, reason


def _offpage_check(candidate: PerGroup | None, champion: PerGroup | None,
                   cfg: GateConfig) -> tuple[bool, float | None, str]:
    """(passes, mean change, reason line) of the off-page check (groups where either side is NaN skipped)."""
    if candidate is None or champion is None:
        return True, None, "ok: no off-page items given; not checked"
    c, p = np.asarray(candidate, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    if c.shape != p.shape:
        raise ValueError(f"off-page lists are not aligned: {c.size} vs {p.size} groups")
    both = ~(np.isnan(c) | np.isnan(p))
    if not both.any():
        return True, None, "ok: no holdout page has both clicked and off-page items; not checked"
    delta = float(c[both].mean() - p[both].mean())
    ok = delta >= -cfg.offpage_tolerance
    return ok, delta, (f"{'ok' if ok else 'fail'}: off-page items take {-c[both].mean():.4f} NDCG@10 from the "
                       f"pages vs {-p[both].mean():.4f} (change {delta:+.4f}, tolerance {cfg.offpage_tolerance:.4f}, "
                       f"{int(both.sum())} groups)")


def decide(
    candidate_holdout: PerGroup,
    champion_holdout: PerGroup,
    candidate_regression: PerGroup | None,
    champion_regression: PerGroup | None,
    cfg: GateConfig,
    seed: int = 0,
    *,
    regression_enforced: bool = True,
    candidate_offpage: PerGroup | None = None,
    champion_offpage: PerGroup | None = None,
) -> GateDecision:
    """Compare per-group NDCG lists (and off-page NDCG changes, when given); see the module docstring for the
    rule. Deterministic for a seed."""
    cand = np.asarray(candidate_holdout, dtype=np.float64)
    champ = np.asarray(champion_holdout, dtype=np.float64)
    if cand.shape != champ.shape:
        raise ValueError(f"holdout lists are not aligned: {cand.size} candidate vs {champ.size} champion groups")
    if (candidate_regression is None) != (champion_regression is None):
        raise ValueError("give both regression lists or neither")
    if cand.size == 0:
        return GateDecision(passed=False, reasons=["fail: the holdout has no query groups"])

    diffs = cand - champ
    gain = float(diffs.mean())
    boot = _paired_bootstrap(diffs, cfg.bootstrap_samples, seed)
    p_gain = float((boot > 0).mean())
    tail = (1.0 - cfg.confidence) / 2.0
    ci_low, ci_high = (float(x) for x in np.quantile(boot, [tail, 1.0 - tail]))
    se = float(boot.std(ddof=1)) if boot.size > 1 else 0.0
    mde = (NormalDist().inv_cdf(cfg.confidence) + NormalDist().inv_cdf(cfg.power)) * se

    ok_gain = gain >= cfg.min_ndcg_gain
    ok_boot = p_gain >= cfg.confidence
    ok_reg, reg_delta, reg_reason = _regression_check(candidate_regression, champion_regression, cfg,
                                                      regression_enforced)
    ok_off, off_delta, off_reason = _offpage_check(candidate_offpage, champion_offpage, cfg)
    reasons = [
        f"{'ok' if ok_gain else 'fail'}: NDCG@10 gain {gain:+.4f} "
        f"({cand.mean():.4f} vs {champ.mean():.4f}) {'>=' if ok_gain else '<'} margin {cfg.min_ndcg_gain:.4f}",
        f"{'ok' if ok_boot else 'fail'}: gain > 0 in {p_gain:.1%} of {cfg.bootstrap_samples} paired bootstrap "
        f"resamples over {cand.size} groups (need {cfg.confidence:.0%}); "
        f"{cfg.confidence:.0%} interval [{ci_low:+.4f}, {ci_high:+.4f}]; smallest detectable gain {mde:.4f} "
        f"(SE {se:.4f})",
        reg_reason,
        off_reason,
    ]
    return GateDecision(
        passed=ok_gain and ok_boot and ok_reg and ok_off, reasons=reasons, offpage_delta=off_delta,
        ndcg_gain=gain, bootstrap_p_gain=p_gain,
        ci_low=ci_low, ci_high=ci_high, regression_delta=reg_delta, n_groups=int(cand.size),
        candidate_ndcg=float(cand.mean()), champion_ndcg=float(champ.mean()), min_detectable_gain=mde,
        bootstrap_se=se,
    )
