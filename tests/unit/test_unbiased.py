"""Inverse-propensity weighting (loss and metric), positions from events, the spread regression sample,
and the fair gate: hand-computed values and the behaviour they exist for."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import torch

from adapters.config import GateConfig, SplitConfig
from adapters.dataset import QueryGroup, build_groups, in_regression_sample, split, truncate_group
from adapters.gate import decide
from adapters.losses import ips_listwise_loss, ips_listwise_terms, ips_weights, listwise_loss
from adapters.ranking_metrics import evaluate_groups, ips_gains, ndcg_from_gains

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


# ----- IPS weighting -------------------------------------------------------------------------------

def test_ips_weights_invert_and_clip() -> None:
    curve = [1.0, 0.5, 0.25, 0.05]
    w = ips_weights([0, 1, 2, 3, 9], curve, max_weight=10.0)
    assert w.tolist() == pytest.approx([1.0, 2.0, 4.0, 10.0, 10.0])  # 1/0.05 = 20 clipped; 9 -> last value
    assert ips_weights([3], curve, max_weight=25.0).tolist() == pytest.approx([20.0])
    with pytest.raises(ValueError):
        ips_weights([0], curve, max_weight=0.5)


def test_ips_listwise_loss_by_hand() -> None:
    scores = torch.tensor([2.0, 0.0, 1.0])
    labels = torch.tensor([1, 0, 1])
    weights = torch.tensor([1.0, 2.0, 4.0])  # the click at the third item was at a 4x rarer position
    logz = math.log(math.exp(2) + math.exp(0) + math.exp(1))
    num, total = ips_listwise_terms(scores, labels, weights)
    # gains (2^1 - 1) * w = 1 and 4 on the clicked items; numerator = -(1 * (2 - logz) + 4 * (1 - logz))
    assert float(num) == pytest.approx(-(1 * (2 - logz) + 4 * (1 - logz)))
    assert float(total) == pytest.approx(5.0)
    assert float(ips_listwise_loss(scores, labels, weights)) == pytest.approx(float(num) / 5.0)
    # all weights 1: the ordinary listwise loss
    plain = float(listwise_loss(scores, labels))
    assert float(ips_listwise_loss(scores, labels, torch.ones(3))) == pytest.approx(plain)
    # the weighted loss pulls harder on the up-weighted click
    s = scores.clone().requires_grad_(True)
    ips_listwise_loss(s, labels, weights).backward()
    assert s.grad is not None and s.grad[2] < s.grad[0]


def test_ips_gains_and_ndcg_by_hand() -> None:
    gains = ips_gains([1, 0, 2], [2, 0, 1], [1.0, 0.5, 0.25], max_weight=10.0)
    assert gains.tolist() == pytest.approx([1 * 4.0, 0.0, 3 * 2.0])
    # ranking item 0 first: DCG = 4/log2(2) + 6/log2(3); ideal: 6/log2(2) + 4/log2(3)
    expected = (4 + 6 / math.log2(3)) / (6 + 4 / math.log2(3))
    assert ndcg_from_gains([3.0, 1.0, 2.0], gains) == pytest.approx(expected)
    assert ndcg_from_gains([1.0, 2.0], [0.0, 0.0]) == 0.0


def test_evaluate_groups_ips_ndcg_by_hand() -> None:
    curve = [1.0, 0.5, 0.25, 0.2]
    deep = QueryGroup("a", "q", T0, ("x", "y"), ("tx", "ty"), (0, 1), positions=(0, 3))  # click at pos 3: w 5
    top = QueryGroup("b", "q", T0, ("x", "y"), ("tx", "ty"), (1, 0), positions=(0, 1))  # click at pos 0: w 1
    plain = QueryGroup("c", "q", T0, ("x", "y"), ("tx", "ty"), (0, 1))  # no positions: plain NDCG
    res = evaluate_groups(lambda q, t: np.array([1.0, 0.0]), [deep, top, plain], propensity=curve)
    # IPS-DCG: deep = 5 / log2(3) (clicked item ranked 2nd), top = 1; mean ideal IPS-DCG = (5 + 1) / 2 = 3
    assert res.per_group_ndcg == pytest.approx([5 / math.log2(3) / 3, 1 / 3, 1 / math.log2(3)])
    raw = evaluate_groups(lambda q, t: np.array([1.0, 0.0]), [deep, top, plain])
    assert raw.per_group_ndcg == pytest.approx([1 / math.log2(3), 1.0, 1 / math.log2(3)])


# ----- positions from events ----------------------------------------------------------------------

def _ev(item: str, action: str, pos: Any, request: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{request}-{item}-{action}", "ts": T0, "query": "q", "item_id": item, "action": action,
            "item_text": f"text {item}", "request_id": request, "session_hash": None, "position": pos, **extra}


def test_build_groups_carries_positions_and_exploration_marks() -> None:
    events = [_ev("b", "impression", 0), _ev("a", "impression", 1), _ev("c", "impression", 2),
              _ev("a", "click", 1), _ev("c", "purchase", 7)]  # a later event's position never overrides
    [g] = build_groups(events, lambda _: None)
    assert g.item_ids == ("a", "b", "c") and g.labels == (1, 0, 3)
    assert g.positions == (1, 0, 2) and g.explore is None and g.ranked_positions is None
    marked = [_ev("a", "impression", 0, "r2", explore="shuffle", ranked_position=1),
              _ev("b", "impression", 1, "r2", explore="shuffle", ranked_position=0), _ev("a", "click", 0, "r2")]
    [m] = build_groups(marked, lambda _: None)
    assert m.explore == "shuffle" and m.positions == (0, 1) and m.ranked_positions == (1, 0)
    # no positions at all, or a missing one: the old behaviour (no correction)
    [n] = build_groups([_ev("a", "impression", None, "r3"), _ev("b", "impression", 0, "r3"),
                        _ev("a", "click", None, "r3")], lambda _: None)
    assert n.positions is None
    kept = truncate_group(g, 2, __import__("random").Random(0))
    assert kept.positions == tuple(g.positions[g.item_ids.index(i)] for i in kept.item_ids)


# ----- the spread regression sample ---------------------------------------------------------------

def _groups(n: int, start: datetime = T0, prefix: str = "g") -> list[QueryGroup]:
    return [QueryGroup(f"{prefix}{i}", f"q{i}", start + timedelta(hours=i), ("a", "b"), ("ta", "tb"), (1, 0))
            for i in range(n)]


def test_spread_regression_sample_covers_the_window_and_is_fixed() -> None:
    old, new = _groups(300, prefix="old"), _groups(200, T0 + timedelta(hours=400), prefix="new")
    cfg = SplitConfig(holdout_fraction=0.2, regression_fraction=0.1, replay_ratio=0.5)
    s = split(new, cfg, previous=old)
    reg = {g.key for g in s.regression}
    assert 25 <= len(reg) <= 75  # about 10% of the 460 groups older than the holdout
    assert any(k.startswith("old") for k in reg) and any(k.startswith("new") for k in reg)
    assert not reg & {g.key for g in s.train} and not reg & {g.key for g in s.holdout}
    # fixed: the next run, with a longer window, keeps every earlier regression group out of training
    s2 = split(new + _groups(50, T0 + timedelta(hours=700), prefix="newer"), cfg, previous=old)
    assert reg <= {g.key for g in s2.regression}
    assert not {g.key for g in s2.train} & reg
    assert all(in_regression_sample(k, 0.1) for k in reg)
    oldest = split(new, SplitConfig(regression_fraction=0.1, regression_sample="oldest"), previous=old)
    assert [g.key for g in oldest.regression] == [f"new{i}" for i in range(20)]


# ----- the fair gate --------------------------------------------------------------------------------

def _logged_pages(n: int, seed: int = 0) -> tuple[list[QueryGroup], dict[str, np.ndarray]]:
    """Pages logged in random order; clicks = examination 1/(k+1) x relevance. Returns pages and the
    true relevance of every page's items (in item order)."""
    rng = np.random.default_rng(seed)
    pages, truth = [], {}
    for i in range(n):
        rel = rng.uniform(0, 1, size=10) ** 2
        shown = rng.permutation(10)  # shown[j] = position of item j
        clicks = rng.random(10) < rel / (shown + 1)
        if not clicks.any():
            continue
        key = f"p{i}"
        truth[key] = rel
        pages.append(QueryGroup(key, key, T0, tuple(f"i{j}" for j in range(10)), tuple(str(j) for j in range(10)),
                                tuple(int(c) for c in clicks), tuple(int(p) for p in shown)))
    return pages, truth


def test_gate_refuses_a_candidate_that_only_copies_the_logging_order() -> None:
    pages, truth = _logged_pages(1500)
    by_key = {g.key: g for g in pages}
    curve = [1.0 / (k + 1) for k in range(10)]

    def copier(q: str, texts: Any) -> np.ndarray:  # the order the pages were shown in, nothing else
        return -np.asarray(by_key[q].positions, dtype=np.float64)

    def champion(q: str, texts: Any) -> np.ndarray:  # a real but imperfect relevance model
        return truth[q] + np.random.default_rng(int(q[1:])).normal(0, 0.15, size=10)

    cfg = GateConfig()
    raw = decide(evaluate_groups(copier, pages).per_group_ndcg, evaluate_groups(champion, pages).per_group_ndcg,
                 None, None, cfg)
    fair = decide(evaluate_groups(copier, pages, propensity=curve).per_group_ndcg,
                  evaluate_groups(champion, pages, propensity=curve).per_group_ndcg, None, None, cfg)
    assert raw.passed and raw.ndcg_gain > 0.05  # raw click NDCG is fooled by the position effect
    assert not fair.passed and fair.ndcg_gain < 0
    # ... while a candidate that really ranks better passes the fair gate
    def better(q: str, texts: Any) -> np.ndarray:
        return truth[q]

    good = decide(evaluate_groups(better, pages, propensity=curve).per_group_ndcg,
                  evaluate_groups(champion, pages, propensity=curve).per_group_ndcg, None, None, cfg)
    assert good.passed


def test_gate_reports_the_smallest_detectable_gain() -> None:
    rng = np.random.default_rng(3)
    champ = rng.uniform(0.4, 0.9, size=400)
    cand = champ + rng.normal(0.01, 0.1, size=400)
    d = decide(cand, champ, None, None, GateConfig(bootstrap_samples=2000))
    se = float(np.std(cand - champ, ddof=1) / np.sqrt(400))
    assert d.bootstrap_se == pytest.approx(se, rel=0.1)
    assert d.min_detectable_gain == pytest.approx((1.2816 + 0.8416) * d.bootstrap_se, rel=1e-3)
    assert "smallest detectable gain" in d.reasons[1]
    small = decide(cand[:50], champ[:50], None, None, GateConfig(bootstrap_samples=2000))
    assert small.min_detectable_gain > d.min_detectable_gain  # fewer holdout pages, larger detectable gain
