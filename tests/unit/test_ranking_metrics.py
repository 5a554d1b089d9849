from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from adapters.dataset import QueryGroup
from adapters.ranking_metrics import auc, evaluate_groups, mrr, ndcg_at_k, rank_order


def _log2(x: float) -> float:
    return math.log(x, 2)


def test_ndcg_hand_computed() -> None:
    scores = [0.9, 0.8, 0.7, 0.1]
    labels = [0, 3, 1, 2]
    dcg = 0 / _log2(2) + 7 / _log2(3) + 1 / _log2(4) + 3 / _log2(5)
    idcg = 7 / _log2(2) + 3 / _log2(3) + 1 / _log2(4) + 0 / _log2(5)
    assert ndcg_at_k(scores, labels) == pytest.approx(dcg / idcg)
    assert ndcg_at_k([4, 3, 2, 1], [3, 2, 1, 0]) == pytest.approx(1.0)


def test_ndcg_cutoff_and_no_relevant() -> None:
    # Only the top 2 count: the relevant item at rank 3 is invisible.
    assert ndcg_at_k([3, 2, 1], [0, 0, 1], k=2) == 0.0
    assert ndcg_at_k([3, 2, 1], [0, 0, 0]) == 0.0
    assert ndcg_at_k([], []) == 0.0


def test_ties_keep_original_order_and_never_use_labels() -> None:
    assert list(rank_order([1.0, 1.0, 1.0])) == [0, 1, 2]
    # A constant scorer gets the NDCG of the original order, whatever the labels say.
    worst_first = ndcg_at_k([0.5, 0.5, 0.5], [0, 0, 3])
    best_first = ndcg_at_k([0.5, 0.5, 0.5], [3, 0, 0])
    assert worst_first == pytest.approx(7 / _log2(4) / 7)
    assert best_first == pytest.approx(1.0)


def test_mrr_hand_computed() -> None:
    assert mrr([0.9, 0.8, 0.7], [0, 0, 2]) == pytest.approx(1 / 3)
    assert mrr([0.1, 0.8, 0.7], [0, 1, 2]) == pytest.approx(1.0)
    assert mrr([0.1, 0.2], [0, 0]) == 0.0


def test_auc_hand_computed() -> None:
    # positives 0.8 and 0.4, negatives 0.6 and 0.4: pairs (0.8>0.6) (0.8>0.4) (0.4<0.6) (0.4=0.4 -> 0.5)
    assert auc([0.8, 0.6, 0.4, 0.4], [1, 0, 2, 0]) == pytest.approx(2.5 / 4)
    assert auc([0.1, 0.2], [1, 1]) is None
    assert auc([0.1, 0.2], [0, 0]) is None


def test_evaluate_groups_means_and_alignment() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    groups = [
        QueryGroup("a", "q1", t0, ("x", "y"), ("tx", "ty"), (1, 0)),
        QueryGroup("b", "q2", t0, ("x", "y"), ("tx", "ty"), (1, 2)),
    ]
    # Scores: the text's position: "tx" ranks above "ty"
    res = evaluate_groups(lambda q, texts: np.array([2.0, 1.0]), groups,
                          loss_fn=lambda s, label: float(label.sum()))
    assert res.n_groups == 2
    assert res.per_group_ndcg[0] == pytest.approx(1.0)
    second = (1 / _log2(2) + 3 / _log2(3)) / (3 / _log2(2) + 1 / _log2(3))
    assert res.per_group_ndcg[1] == pytest.approx(second)
    assert res.ndcg10 == pytest.approx((1.0 + second) / 2)
    assert res.mrr == pytest.approx(1.0)
    assert res.auc == pytest.approx(1.0)  # group b has no negative: skipped, not counted as 0.5
    assert res.loss == pytest.approx(2.0)
    assert "per_group_ndcg" not in res.to_dict()


def test_evaluate_groups_rejects_wrong_length() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    g = QueryGroup("a", "q", t0, ("x", "y"), ("tx", "ty"), (1, 0))
    with pytest.raises(ValueError, match="scores"):
        evaluate_groups(lambda q, texts: np.array([1.0]), [g])
