"""Position-bias estimators recover a known examination curve from synthetic logs."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import numpy as np
import pytest

from adapters.dataset import QueryGroup
from adapters.propensity import (
    MIN_SLOT_REPEATS,
    PropensityCurve,
    estimate,
    estimate_harvested,
    estimate_randomized,
    estimate_regression_em,
    max_relative_error,
    power_curve,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_QUERIES = 400


@functools.cache
def _relevance(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: 30 items with click-relevance in [0, 0.9], and a noisy feature of it."""
    r = np.random.default_rng(1000 + q)
    rel = 0.9 * r.uniform(0, 1, size=30) ** 2
    return rel, rel + r.normal(0, 0.15, size=30)


def _logs(n_pages: int, eta: float, *, explore: float, noisy_ranker: bool, seed: int = 0,
          n_queries: int = N_QUERIES) -> list[QueryGroup]:
    """Pages of 10 items under examination 1/(k+1)^eta; `explore` of them shuffled and marked."""
    rng = np.random.default_rng(seed)
    out = []
    for page in range(n_pages):
        q = int(rng.integers(0, n_queries))
        rel, feat = _relevance(q)
        score = feat + (rng.normal(0, 0.3, size=30) if noisy_ranker else 0.0)
        order = np.argsort(-score, kind="stable")[:10]
        shown_rank = np.arange(10)
        explored = rng.random() < explore
        if explored:
            rng.shuffle(shown_rank)  # shown_rank[p]: the rank of the item now at position p
        items = order[shown_rank]
        clicks = rng.random(10) < (np.arange(1, 11) ** -eta) * rel[items]
        if not clicks.any() or clicks.all():
            continue
        out.append(QueryGroup(
            f"p{page}", f"q{q}", T0, tuple(f"i{i}" for i in items), tuple("" for _ in items),
            tuple(int(c) for c in clicks), tuple(range(10)), "shuffle" if explored else None,
            tuple(int(r) for r in shown_rank) if explored else None,
        ))
    return out


TRUE = power_curve(1.0, 10).values


def test_randomized_pages_recover_the_curve() -> None:
    groups = _logs(8_000, 1.0, explore=1.0, noisy_ranker=False)
    curve = estimate_randomized(groups)
    assert curve.method == "randomized" and all(s > 0 for s in curve.support)
    assert max_relative_error(curve.values, TRUE) < 0.2
    # only marked pages count: the same logs without marks estimate nothing
    unmarked = [QueryGroup(g.key, g.query, g.ts, g.item_ids, g.texts, g.labels, g.positions) for g in groups]
    assert estimate_randomized(unmarked).n_pages == 0


def test_shuffled_pages_without_ranks_mix_with_ranked_explored_pages() -> None:
    # swapped pages carry each item's ranked position; pages shuffled as a whole may not: those items are
    # one slot of their own, not rank 0's (whose items are far more relevant than a random one)
    rng = np.random.default_rng(0)
    relevance = np.linspace(0.9, 0.1, 10)  # by the ranker's rank

    def page(i: int, ranked: bool) -> QueryGroup:
        shown = np.arange(10)
        if ranked:
            for p in range(0, 9, 2):
                if rng.random() < 0.5:
                    shown[p], shown[p + 1] = shown[p + 1], shown[p]
            if rng.random() < 0.5:
                shown = np.r_[shown[0], shown[1:9][[1, 0, 3, 2, 5, 4, 7, 6]], shown[9]]
        else:
            shown = rng.permutation(10)
        pos = np.empty(10, dtype=int)
        pos[shown] = np.arange(10)  # pos[r]: where the item of rank r was shown
        clicks = rng.random(10) < np.asarray(TRUE)[pos] * relevance
        ids = tuple(f"p{i}-{r}" for r in range(10))
        return QueryGroup(f"r{i}", "q", T0, ids, ids, tuple(int(c) for c in clicks), tuple(int(p) for p in pos),
                          "swap" if ranked else "shuffle", tuple(range(10)) if ranked else None)

    mixed = [page(i, True) for i in range(6000)] + [page(6000 + i, False) for i in range(6000)]
    assert max_relative_error(estimate_randomized(mixed).values, TRUE) < 0.15


def test_harvesting_needs_no_intervention_but_varied_rankers() -> None:
    curve = estimate_harvested(_logs(10_000, 0.7, explore=0.0, noisy_ranker=True))
    assert max_relative_error(curve.values, power_curve(0.7, 10).values) < 0.2
    # one deterministic ranker never shows a (query, item) at two positions: nothing to harvest
    assert sum(estimate_harvested(_logs(2_000, 1.0, explore=0.0, noisy_ranker=False)).support) == 0


@pytest.mark.slow
def test_regression_em_works_from_a_single_deterministic_ranker() -> None:
    # every query's page is the same, so the estimate sees each (query, item) at one position only
    groups = _logs(8_000, 1.0, explore=0.0, noisy_ranker=False, n_queries=4_000)

    curve = estimate_regression_em(groups, _features)
    assert max_relative_error(curve.values, TRUE) < 0.2
    # a wrong answer is possible: ignoring the position (a flat curve) would be off by 900% at position 10
    assert max_relative_error([1.0] * 10, TRUE) > 5


def _features(g: QueryGroup) -> np.ndarray:
    _, feat = _relevance(int(g.query[1:]))
    return np.array([feat[int(i[1:])] for i in g.item_ids])


def test_auto_prefers_randomized_then_falls_back() -> None:
    assert estimate(_logs(3_000, 1.0, explore=0.5, noisy_ranker=False)).method == "randomized"
    assert estimate(_logs(3_000, 1.0, explore=0.0, noisy_ranker=True)).method == "harvested"
    fallback = estimate(_logs(200, 1.0, explore=0.0, noisy_ranker=False))
    assert fallback.method.startswith("prior") and fallback.values == pytest.approx(TRUE)


def test_auto_harvests_only_pairs_seen_often_when_regression_em_can_run() -> None:
    # 3,000 pages of 400 queries: each harvested (query, item) seen about 4 times; its own relevance fit is
    # noisy and so is the curve; regression EM on a relevance feature is closer, and auto takes it
    few = _logs(3_000, 1.0, explore=0.0, noisy_ranker=True)
    harvested = estimate(few, method="harvested")
    assert 2 < harvested.slot_repeats < MIN_SLOT_REPEATS
    chosen = estimate(few, features=_features)
    assert chosen.method == "regression_em"
    assert max_relative_error(chosen.values, TRUE) < max_relative_error(harvested.values, TRUE)
    # 10,000 pages: about 10 impressions per pair, harvesting is as close and needs no model of relevance
    many = _logs(10_000, 1.0, explore=0.0, noisy_ranker=True)
    chosen = estimate(many, features=_features)
    assert chosen.method == "harvested" and chosen.slot_repeats >= MIN_SLOT_REPEATS
    assert max_relative_error(chosen.values, TRUE) < 0.2
    assert PropensityCurve.from_dict(chosen.to_dict()).slot_repeats == pytest.approx(chosen.slot_repeats, abs=1e-3)


def test_curve_roundtrip_and_lookup() -> None:
    c = PropensityCurve((1.0, 0.5, 0.25), "test", 3, 4, (9, 9, 9))
    assert c.at(0) == 1.0 and c.at(7) == 0.25
    assert PropensityCurve.from_dict(c.to_dict()) == c
    assert max_relative_error([2.0, 1.0], [1.0, 0.4]) == pytest.approx(0.25)
