"""Ranking metrics per query group and over a set of groups (numpy only).

Ordering rule, used by every metric: items are sorted by descending score with a *stable* sort, so tied
scores keep the group's original item order. The label never takes part in the sort: breaking ties by
label (or by anything correlated with it) would hand a constant or collapsed model a perfect score.
`dataset.build_groups` orders each group's items by item id, not by the position they were shown at,
so the original order carries no click signal either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "EvalResult",
    "auc",
    "dcg_from_gains",
    "evaluate_groups",
    "ips_gains",
    "mrr",
    "ndcg_at_k",
    "ndcg_from_gains",
    "offpage_accuracy",
    "offpage_ndcg_change",
    "rank_order",
]


class _Group(Protocol):
    @property
    def query(self) -> str: ...
    @property
    def texts(self) -> Sequence[str]: ...
    @property
    def labels(self) -> Sequence[int]: ...


def rank_order(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices of items from best to worst: descending score, ties in original order."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-s, kind="stable")


def ndcg_at_k(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, k: int = 10) -> float:
    """NDCG@k with graded gains `2^rel - 1` and `log2(rank + 1)` discounts; 0.0 when no item is relevant."""
    rel = np.asarray(labels, dtype=np.float64)
    if rel.size == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, min(k, rel.size) + 2))
    gains = np.power(2.0, rel) - 1.0
    dcg = float((gains[rank_order(scores)][:k] * discounts).sum())
    idcg = float((np.sort(gains)[::-1][:k] * discounts).sum())
    return dcg / idcg if idcg > 0 else 0.0


def dcg_from_gains(scores: Sequence[float] | np.ndarray, gains: Sequence[float] | np.ndarray, k: int = 10) -> float:
    """DCG@k of the ranking by `scores` with the item gains given directly (`log2(rank + 1)` discounts)."""
    g = np.asarray(gains, dtype=np.float64)
    if g.size == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, min(k, g.size) + 2))
    return float((g[rank_order(scores)][:k] * discounts).sum())


def ndcg_from_gains(scores: Sequence[float] | np.ndarray, gains: Sequence[float] | np.ndarray, k: int = 10) -> float:
    """NDCG@k with the item gains given directly (e.g. position-debiased gains); 0.0 when all are 0."""
    g = np.asarray(gains, dtype=np.float64)
    if g.size == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, min(k, g.size) + 2))
    dcg = float((g[rank_order(scores)][:k] * discounts).sum())
    idcg = float((np.sort(g)[::-1][:k] * discounts).sum())
    return dcg / idcg if idcg > 0 else 0.0


def ips_gains(
    labels: Sequence[int] | np.ndarray,
    positions: Sequence[int] | np.ndarray,
    propensity: Sequence[float] | np.ndarray,
    max_weight: float,
) -> np.ndarray:
    """Position-debiased gains `(2^label - 1) * min(1 / propensity[position], max_weight)` of one page.

    DCG over these gains (`dcg_from_gains`) is the inverse-propensity-scored DCG of the page: a click at
    a position few shoppers look at counts for as many clicks as it stands for. Positions beyond the
    curve take its last value.
    """
    p = np.asarray(propensity, dtype=np.float64)
    idx = np.minimum(np.asarray(positions, dtype=np.int64), p.size - 1)
    with np.errstate(divide="ignore"):
        w = np.minimum(1.0 / np.maximum(p[idx], 1e-12), max_weight)
    return (np.power(2.0, np.asarray(labels, dtype=np.float64)) - 1.0) * w


def mrr(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Reciprocal rank of the first item with `label > 0`; 0.0 when there is none."""
    rel = np.asarray(labels)[rank_order(scores)]
    hits = np.flatnonzero(rel > 0)
    return 1.0 / (hits[0] + 1) if hits.size else 0.0


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float | None:
    """Probability that a positive (`label > 0`) outscores a negative; ties count half. None with one class."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels) > 0
    if pos.all() or not pos.any():
        return None
    diff = s[pos][:, None] - s[~pos][None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@dataclass(frozen=True)
class EvalResult:
    """Metrics over a set of query groups (means over groups; AUC over groups where it is defined)."""

    ndcg10: float
    mrr: float
    auc: float | None
    loss: float | None
    per_group_ndcg: list[float] = field(repr=False)
    n_groups: int

    def to_dict(self, *, with_groups: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_groups:
            d.pop("per_group_ndcg")
        return d


def evaluate_groups(
    score_fn: Callable[[str, Sequence[str]], np.ndarray],
    groups: Sequence[_Group],
    *,
    loss_fn: Callable[[np.ndarray, np.ndarray], float] | None = None,
    k: int = 10,
    propensity: Sequence[float] | None = None,
    max_weight: float = 10.0,
) -> EvalResult:
    """Score every group with `score_fn(query, texts)` and average NDCG@k, MRR, AUC (and `loss_fn`).

    `per_group_ndcg` keeps the groups' order, so two models evaluated on the same groups can be
    compared pair by pair (see `gate.decide`).

    With a `propensity` curve, every group that has positions gets IPS-NDCG instead: its DCG@k over the
    debiased gains of `ips_gains` (clipped at `max_weight`), divided by the mean ideal IPS-DCG of all such
    groups. The divisor is one constant for the whole set, so a page whose clicks sat at rarely seen
    positions weighs more, as it must: normalizing each page by its own ideal would cancel the weight of a
    page with one click and reward a model for copying the logged order. The mean over groups is then an
    unbiased estimate (up to clipping) of the full-information DCG, on a scale where the ideal averages 1.
    Groups without positions, MRR and AUC use the raw labels.
    """
    ndcgs: list[float] = []
    mrrs: list[float] = []
    aucs: list[float] = []
    losses: list[float] = []
    ips: dict[int, tuple[float, float]] = {}  # group index -> (IPS-DCG, IPS-ideal DCG)
    for n, g in enumerate(groups):
        scores = np.asarray(score_fn(g.query, g.texts), dtype=np.float64)
        labels = np.asarray(g.labels)
        if scores.shape != labels.shape:
            raise ValueError(f"score_fn returned {scores.shape[0]} scores for {labels.shape[0]} items")
        positions = getattr(g, "positions", None)
        if propensity is not None and positions is not None:
            gains = ips_gains(labels, positions, propensity, max_weight)
            ips[n] = (dcg_from_gains(scores, gains, k), dcg_from_gains(gains, gains, k))
            ndcgs.append(0.0)  # filled in below, once the holdout's mean ideal DCG is known
        else:
            ndcgs.append(ndcg_at_k(scores, labels, k))
        mrrs.append(mrr(scores, labels))
        a = auc(scores, labels)
        if a is not None:
            aucs.append(a)
        if loss_fn is not None:
            losses.append(float(loss_fn(scores, labels)))
    if ips:
        scale = float(np.mean([ideal for _, ideal in ips.values()]))
        for n, (dcg, _) in ips.items():
            ndcgs[n] = dcg / scale if scale > 0 else 0.0
    return EvalResult(
        ndcg10=float(np.mean(ndcgs)) if ndcgs else 0.0,
        mrr=float(np.mean(mrrs)) if mrrs else 0.0,
        auc=float(np.mean(aucs)) if aucs else None,
        loss=float(np.mean(losses)) if losses else None,
        per_group_ndcg=ndcgs,
        n_groups=len(ndcgs),
    )


def offpage_accuracy(score_fn: Callable[[str, Sequence[str]], np.ndarray], groups: Sequence[_Group],
                     n_page: Sequence[int]) -> list[float]:
    """Per group: how often the model scores a clicked item of the page above an item added from other
    pages (`gate.OffpageHoldout`: the first `n_page[i]` items of `groups[i]` are its page, the rest were
    added), as `auc` over those two sets (ties count half); NaN where either set is empty.

    A page holds what retrieval found for its query; a model can learn to order pages better while ranking
    products that do not match at all above relevant ones (the LoRA adapter did, in `bench learn`), which
    no metric on the pages themselves can see. `bench learn` reports it (the gate's check was this before it
    read `offpage_ndcg_change`). Scores the whole group, as `offpage_ndcg_change` does, so that a caller
    that caches scores by (query, texts) scores each group once for both."""
    out: list[float] = []
    for g, n in zip(groups, n_page, strict=True):
        labels = np.asarray(g.labels)
        clicked, added = np.flatnonzero(labels[:n] > 0), np.arange(n, labels.size)
        if not clicked.size or not added.size:
            out.append(float("nan"))
            continue
        keep = np.concatenate([clicked, added])
        scores = np.asarray(score_fn(g.query, list(g.texts)), dtype=np.float64)[keep]
        out.append(float(auc(scores, (keep < n).astype(np.int64)) or 0.0))  # both classes present: never None
    return out


def offpage_ndcg_change(score_fn: Callable[[str, Sequence[str]], np.ndarray], groups: Sequence[_Group],
                        n_page: Sequence[int], k: int = 10) -> list[float]:
    """Per group: NDCG@k of the whole group minus NDCG@k of its page alone (`gate.OffpageHoldout`: the first
    `n_page[i]` items of `groups[i]` are its page, the rest were added from other pages, all unclicked), with
    the page's graded click labels; at most 0, and the further below 0 the higher the model ranks the added
    items among the page's clicked ones. NaN where the page has no click or nothing was added.

    What the gate's off-page check compares (`gate.decide`): a model that ranks products matching nothing
    into the top of a page costs NDCG@k there, one that only misorders them at the bottom of the list costs
    little. `offpage_accuracy` counts every (clicked, added) pair alike, wherever in the list it sits."""
    out: list[float] = []
    for g, n in zip(groups, n_page, strict=True):
        labels = np.asarray(g.labels)
        if n >= labels.size or not (labels[:n] > 0).any():
            out.append(float("nan"))
            continue
        scores = np.asarray(score_fn(g.query, list(g.texts)), dtype=np.float64)
        out.append(ndcg_at_k(scores, labels, k) - ndcg_at_k(scores[:n], labels[:n], k))
    return out
