"""Ranking losses over one query group: `loss(scores, labels) -> scalar tensor`.

`scores` are the model's logits for the group's items, `labels` their graded relevance (0..3). Training
averages the per-group losses of a step. Every loss is finite for any group with at least two items;
groups without a positive give 0 for the listwise loss (nothing to learn from).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

GroupLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ListNet-style softmax cross-entropy against the graded gains `2^rel - 1`, normalised.

    The target puts the same weight on each item as NDCG's gain does, so a purchase (rel 3, gain 7)
    pulls seven times harder than a click (rel 1, gain 1).
    """
    gains = torch.pow(2.0, labels.to(scores.dtype)) - 1.0
    total = gains.sum()
    if total <= 0:
        return scores.sum() * 0.0  # keeps the graph connected, contributes nothing
    target = gains / total
    return -(target * F.log_softmax(scores, dim=-1)).sum()


def pairwise_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RankNet: mean logistic loss `log(1 + exp(-(s_i - s_j)))` over pairs with `label_i > label_j`."""
    diff = scores.unsqueeze(1) - scores.unsqueeze(0)  # [i, j] = s_i - s_j
    better = labels.unsqueeze(1) > labels.unsqueeze(0)
    if not bool(better.any()):
        return scores.sum() * 0.0
    return F.softplus(-diff[better]).mean()


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fallback: binary cross-entropy of each item, positive when `label > 0`."""
    return F.binary_cross_entropy_with_logits(scores, (labels > 0).to(scores.dtype))


def ips_weights(
    positions: Sequence[int], propensity: Sequence[float], max_weight: float
) -> torch.Tensor:
    """Inverse-propensity weight of each item: `min(1 / propensity[position], max_weight)`.

    `propensity[k]` is the examination probability of 0-based position k relative to the top
    (`propensity[0] == 1`); positions beyond the curve take its last value. Clipping at `max_weight`
    trades a little bias at deep positions for much less variance (Joachims et al. 2017).
    """
    if not propensity:
        raise ValueError("empty propensity curve")
    if max_weight < 1:
        raise ValueError("max_weight must be >= 1")
    last = len(propensity) - 1
    out = []
    for k in positions:
        p = float(propensity[min(int(k), last)])
        out.append(max_weight if p <= 0 else min(1.0 / p, max_weight))
    return torch.tensor(out, dtype=torch.float32)


def ips_listwise_terms(
    scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-propensity-weighted listwise loss of one group, as (numerator, weight) for batching.

    numerator `= -sum_i w_i g_i log softmax(scores)_i` with gains `g_i = 2^label_i - 1`, and weight
    `= sum_i w_i g_i`. Training divides the batch's summed numerators by its summed weights (the IPW
    softmax loss of ULTRA, Ai et al. 2018): each click counts once, scaled by how unlikely its position
    made it to be seen, so in expectation the loss is the full-information ListNet loss, weighted per group
    by its total relevance. With every weight 1 it is the plain listwise loss, weighted by gain sums.
    """
    gains = (torch.pow(2.0, labels.to(scores.dtype)) - 1.0) * weights.to(scores.device, scores.dtype)
    total = gains.sum()
    if total <= 0:
        return scores.sum() * 0.0, total.detach()
    return -(gains * F.log_softmax(scores, dim=-1)).sum(), total.detach()


def ips_listwise_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`ips_listwise_terms` of one group as a single loss (numerator / weight; 0 without a positive)."""
    num, total = ips_listwise_terms(scores, labels, weights)
    return num / total if total > 0 else num


LOSSES: dict[str, GroupLoss] = {
    "listwise": listwise_loss,
    "pairwise": pairwise_loss,
    "pointwise": pointwise_loss,
}


def get_loss(name: str) -> GroupLoss:
    """The loss function called `name` (listwise | pairwise | pointwise)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
