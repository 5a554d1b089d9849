from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from adapters.config import GateConfig
from adapters.gate import ScoreFn, decide

CFG = GateConfig(min_ndcg_gain=0.005, bootstrap_samples=1000, confidence=0.9, regression_tolerance=0.01)


def _champion(n: int = 80, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 0.9, size=n)


def test_clearly_better_candidate_passes() -> None:
    champ = _champion()
    cand = np.clip(champ + np.random.default_rng(2).normal(0.05, 0.03, size=champ.size), 0, 1)
    d = decide(cand, champ, cand[:20], champ[:20], CFG)
    assert d.passed, d.reasons
    assert d.ndcg_gain > 0.03
    assert d.bootstrap_p_gain >= 0.99
    assert d.ci_low > 0
    assert all(r.startswith("ok") for r in d.reasons)


def test_worse_candidate_refused() -> None:
    champ = _champion()
    cand = champ - 0.04
    d = decide(cand, champ, None, None, CFG)
    assert not d.passed
    assert d.ndcg_gain == pytest.approx(-0.04)
    assert d.bootstrap_p_gain == 0.0
    assert any(r.startswith("fail: NDCG@10 gain") for r in d.reasons)


def test_equal_candidate_refused_even_with_zero_margin() -> None:
    champ = _champion()
    d = decide(champ.copy(), champ, None, None, GateConfig(min_ndcg_gain=0.0))
    assert not d.passed
    assert d.ndcg_gain == 0.0
    assert d.bootstrap_p_gain == 0.0  # no resample shows a gain > 0


def test_noisy_small_gain_refused_by_bootstrap() -> None:
    champ = _champion(n=30)
    noise = np.random.default_rng(3).normal(0.0, 0.2, size=30)
    cand = champ + noise - noise.mean() + 0.01  # mean gain 0.01 >= margin, but pure noise around it
    d = decide(cand, champ, None, None, CFG)
    assert d.ndcg_gain == pytest.approx(0.01)
    assert not d.passed
    assert any(r.startswith("fail: gain > 0") for r in d.reasons)


def test_regression_beyond_tolerance_refused() -> None:
    champ = _champion()
    cand = champ + 0.05
    reg_champ = _champion(n=40, seed=5)
    d = decide(cand, champ, reg_champ - 0.03, reg_champ, CFG)
    assert not d.passed
    assert d.regression_delta == pytest.approx(-0.03)
    assert any(r.startswith("fail: regression") for r in d.reasons)
    # A small loss within tolerance is fine.
    assert decide(cand, champ, reg_champ - 0.005, reg_champ, CFG).passed


def test_regression_against_the_base_is_reported_not_enforced() -> None:
    champ = _champion()
    cand = champ + 0.05
    reg_champ = _champion(n=40, seed=5)
    d = decide(cand, champ, reg_champ - 0.03, reg_champ, CFG, regression_enforced=False)
    assert d.passed and d.regression_delta == pytest.approx(-0.03)
    assert any(r.startswith("info: regression") and "not enforced" in r for r in d.reasons)
    # the other checks still bind
    assert not decide(champ + 0.001, champ, reg_champ, reg_champ, CFG, regression_enforced=False).passed


def test_deterministic_and_serialisable() -> None:
    champ = _champion()
    cand = champ + np.random.default_rng(9).normal(0.01, 0.05, size=champ.size)
    a = decide(cand, champ, None, None, CFG, seed=4)
    b = decide(cand, champ, None, None, CFG, seed=4)
    assert a == b
    json.dumps(a.to_dict())


def test_misaligned_inputs_raise() -> None:
    with pytest.raises(ValueError, match="aligned"):
        decide([0.5, 0.6], [0.5], None, None, CFG)
    with pytest.raises(ValueError, match="both"):
        decide([0.5], [0.5], [0.5], None, CFG)


def test_empty_holdout_refused() -> None:
    d = decide([], [], None, None, CFG)
    assert not d.passed
    assert "no query groups" in d.reasons[0]


def test_thresholds_are_inclusive() -> None:
    # powers of two, so that the means and differences are exact in floating point
    cfg = CFG.model_copy(update=dict(min_ndcg_gain=2**-7, regression_tolerance=2**-6))
    champ = np.full(80, 0.5)
    exact = decide(champ + 2**-7, champ, champ - 2**-6, champ, cfg)  # gain == margin, loss == tolerance
    assert exact.passed, exact.reasons
    assert any(r.startswith("ok: NDCG@10 gain +0.0078") and ">= margin" in r for r in exact.reasons)
    assert any(r.startswith("ok: regression") and "within tolerance" in r for r in exact.reasons)
    below = decide(champ + 2**-8, champ, champ - 2**-5, champ, cfg)
    assert not below.passed
    assert any(r.startswith("fail: NDCG@10 gain") and "< margin" in r for r in below.reasons)
    assert any(r.startswith("fail: regression") and "beyond tolerance" in r for r in below.reasons)


def test_interval_and_summary_numbers() -> None:
    champ = _champion(n=400)
    diffs = np.random.default_rng(3).normal(0.02, 0.1, size=champ.size)
    d = decide(champ + diffs, champ, None, None, CFG, seed=7)
    se = diffs.std(ddof=1) / np.sqrt(diffs.size)
    assert d.bootstrap_se == pytest.approx(se, rel=0.15)
    # a 90% two-sided interval: about 1.645 SE either side of the mean gain
    assert d.ci_low == pytest.approx(d.ndcg_gain - 1.645 * se, abs=0.4 * se)
    assert d.ci_high == pytest.approx(d.ndcg_gain + 1.645 * se, abs=0.4 * se)
    assert d.min_detectable_gain == pytest.approx((1.2816 + 0.8416) * d.bootstrap_se, rel=1e-3)
    assert d.n_groups == 400
    assert d.candidate_ndcg == pytest.approx(float((champ + diffs).mean()))
    assert d.champion_ndcg == pytest.approx(float(champ.mean()))


def test_empty_or_missing_regression_is_not_checked() -> None:
    champ = _champion()
    empty = decide(champ + 0.05, champ, [], [], CFG)
    assert empty.passed and empty.regression_delta is None
    assert "ok: regression holdout is empty; not checked" in empty.reasons
    missing = decide(champ + 0.05, champ, None, None, CFG)
    assert missing.passed and "ok: no regression holdout given; not checked" in missing.reasons
    with pytest.raises(ValueError, match="both regression lists or neither"):
        decide(champ, champ, champ, None, CFG)
    with pytest.raises(ValueError, match="not aligned"):
        decide(champ, champ, champ[:3], champ[:4], CFG)
    nothing = decide([], [], None, None, CFG)
    assert nothing.passed is False and nothing.reasons == ["fail: the holdout has no query groups"]


def _offpage_fixture() -> tuple[dict[str, float], Any, Any, Callable[[str, list[str]], np.ndarray]]:
    """A page a (click, 1), b (not), c (cart, 2) plus x, y from other pages; a page without a click; a scorer
    reading the (mutable) `scores`."""
    from datetime import datetime

    from adapters.dataset import QueryGroup

    scores = {"a": 3.0, "b": 9.0, "c": 1.0, "x": 2.0, "y": 0.0}
    g = QueryGroup(key="k", query="q", ts=datetime(2026, 1, 1), item_ids=tuple("abcxy"),
                   texts=tuple("abcxy"), labels=(1, 0, 2, 0, 0))
    no_click = QueryGroup(key="n", query="q", ts=g.ts, item_ids=tuple("bxy"), texts=tuple("bxy"), labels=(0, 0, 0))

    def fn(_q: str, texts: list[str]) -> np.ndarray:
        return np.asarray([scores[t] for t in texts])

    return scores, g, no_click, fn


def test_offpage_accuracy_by_hand() -> None:
    """Page: a (clicked), b (not), c (clicked); added from other pages: x, y. The pairs are (a|c) x (x|y);
    b takes no part. Scores a 3, b 9, c 1, x 2, y 0: a beats both, c beats y only -> 3/4."""
    from adapters.ranking_metrics import offpage_accuracy

    scores, g, no_click, fn = _offpage_fixture()
    got = offpage_accuracy(fn, [g, no_click, g], [3, 1, 5])
    assert got[0] == pytest.approx(0.75)
    assert np.isnan(got[1])  # no clicked item
    assert np.isnan(got[2])  # nothing added
    scores["x"] = 3.0  # a tie with a counts half
    assert offpage_accuracy(fn, [g], [3]) == [pytest.approx(0.625)]


def test_offpage_ndcg_change_by_hand() -> None:
    """Page: a (click, 1), b (not), c (cart, 2); added: x, y. Scores a 3, b 9, c 1, x 2, y 0. The page alone
    ranks b a c: DCG 1/log2(3) + 3/log2(4); with x and y, b a x c y: 1/log2(3) + 3/log2(5). The ideal (c a) is
    3 + 1/log2(3) either way, so the change is (3/log2(5) - 3/2) / (3 + 1/log2(3))."""
    from math import log2

    from adapters.ranking_metrics import offpage_ndcg_change

    scores, g, no_click, fn = _offpage_fixture()
    got = offpage_ndcg_change(fn, [g, no_click, g], [3, 1, 5])
    assert got[0] == pytest.approx((3 / log2(5) - 3 / 2) / (3 + 1 / log2(3)))
    assert np.isnan(got[1])  # no clicked item
    assert np.isnan(got[2])  # nothing added
    scores["x"] = -1.0  # below every page item: costs nothing
    assert offpage_ndcg_change(fn, [g], [3]) == [pytest.approx(0.0)]


def test_the_off_page_change_weighs_where_added_items_land_unlike_the_pair_share() -> None:
    """Two models each order half of the (clicked, added) pairs wrong: one puts an added item first, the other
    puts both added items just above a weak click at the bottom. The pair share cannot tell them apart;
    NDCG@10 takes a third from the first and almost nothing from the second."""
    from datetime import datetime

    from adapters.dataset import QueryGroup
    from adapters.ranking_metrics import offpage_accuracy, offpage_ndcg_change

    page = [f"p{j}" for j in range(8)]
    g = QueryGroup(key="k", query="q", ts=datetime(2026, 1, 1), item_ids=(*page, "x", "y"), texts=(*page, "x", "y"),
                   labels=(3, 0, 0, 0, 0, 0, 0, 1, 0, 0))  # a purchase on top, a weak click at the bottom
    base = {t: 10.0 - j for j, t in enumerate(page)}  # the page in its own order: p0 10 ... p7 3

    def model(x: float, y: float) -> ScoreFn:
        return lambda _q, texts: np.asarray([base.get(t, x if t == "x" else y) for t in texts])

    top, bottom = model(11.0, -5.0), model(3.6, 3.5)
    assert offpage_accuracy(top, [g], [8]) == offpage_accuracy(bottom, [g], [8]) == [0.5]
    [cost_top], [cost_bottom] = offpage_ndcg_change(top, [g], [8]), offpage_ndcg_change(bottom, [g], [8])
    assert cost_top < -0.3 and -0.01 < cost_bottom < 0, (cost_top, cost_bottom)


def test_a_candidate_that_ranks_off_page_items_above_clicked_ones_is_refused() -> None:
    """It gains on the pages (checks 1-3 pass) and lets items of other pages take more NDCG@10 from the pages
    than the champion does, by more than the tolerance; NaN groups are skipped."""
    champ = _champion()
    cand = champ + 0.05
    champ_off = np.full(champ.size, -0.01)
    d = decide(cand, champ, None, None, CFG, candidate_offpage=champ_off - 0.047, champion_offpage=champ_off)
    assert not d.passed and d.offpage_delta == pytest.approx(-0.047)
    assert any(r.startswith("fail: off-page items take") for r in d.reasons), d.reasons
    near = champ_off - 0.019
    near[:5] = np.nan
    d = decide(cand, champ, None, None, CFG, candidate_offpage=near, champion_offpage=champ_off)
    assert d.passed and d.offpage_delta == pytest.approx(-0.019), d.reasons
    assert f"{champ.size - 5} groups" in d.reasons[-1]
    with pytest.raises(ValueError, match="off-page lists are not aligned"):
        decide(cand, champ, None, None, CFG, candidate_offpage=near[:3], champion_offpage=champ_off)


def test_the_off_page_holdout_catches_a_model_that_only_learned_the_pages() -> None:
    """A page-perfect model that puts anything it never saw on a page first: the NDCG of the pages cannot tell
    it from the champion, the off-page holdout can."""
    import random
    from datetime import datetime

    from adapters.dataset import QueryGroup, Splits
    from adapters.gate import OffpageHoldout
    from adapters.ranking_metrics import evaluate_groups

    rng = random.Random(3)
    pages = []
    for n in range(60):
        items = [f"q{n}-i{j}" for j in range(8)]
        pages.append(QueryGroup(key=f"k{n}", query=f"query {n}", ts=datetime(2026, 1, 1), item_ids=tuple(items),
                                texts=tuple(items), labels=tuple(int(rng.random() < 0.3) for _ in items)))
    relevant = {t for g in pages for t, lab in zip(g.texts, g.labels, strict=True) if lab}

    def champion(query: str, texts: list[str]) -> np.ndarray:  # knows relevance, off-page items score low
        own = query.split()[1]
        return np.asarray([2.0 if t in relevant else (1.0 if t.startswith(f"q{own}-") else 0.0) for t in texts])

    def copier(query: str, texts: list[str]) -> np.ndarray:  # the same on its own pages; others score highest
        own = query.split()[1]
        return np.asarray([(2.0 if t in relevant else 1.0) if t.startswith(f"q{own}-") else 5.0 for t in texts])

    holdout = pages[40:]
    same = evaluate_groups(copier, holdout).per_group_ndcg
    assert same == evaluate_groups(champion, holdout).per_group_ndcg
    off = OffpageHoldout.build(Splits(train=pages[:40], holdout=holdout, regression=[]), GateConfig(), seed=1)
    assert off is not None and all(len(g) == n + 10 for g, n in zip(off.groups, off.n_page, strict=True))
    d = decide(np.asarray(same) + 0.05, same, None, None, CFG, candidate_offpage=off.ndcg_change(copier),
               champion_offpage=off.ndcg_change(champion))
    assert not d.passed and d.offpage_delta is not None and d.offpage_delta < -0.5
    assert OffpageHoldout.build(Splits(train=pages[:40], holdout=holdout, regression=[]), GateConfig(offpage_items=0),
                                seed=1) is None
