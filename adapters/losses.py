"""Ranking losses over one query group: `loss(scores, labels) -> scalar tensor`.

`scores` are the model's logits for the group's items, `labels` their graded relevance (0..3). Training
averages the per-group losses of a step. Every loss is finite for any group with at least two items;
groups without a positive give 0 for the listwise loss (nothing to learn from).
"""

from __future__ import annotations

from collections.abc import Callable

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
