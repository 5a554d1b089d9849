"""Drift statistics: identical distributions stay under their noise floors, real shifts exceed them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from daemon.training.drift_stats import js_divergence, psi, psi_floor, term_counts, terms, unseen_shares


def test_psi_of_identical_distributions_stays_under_threshold_plus_floor():
    rng = np.random.default_rng(1)
    worst = max(psi(rng.normal(size=300), rng.normal(size=300)) for _ in range(50))
    # raw PSI of same-distribution windows of 300 can approach the textbook 0.2 threshold...
    assert worst < 0.2 + psi_floor(300, 300)
    # ...and the floor is what makes that safe
    assert psi_floor(300, 300) == pytest.approx(0.06)


def test_psi_detects_a_shift():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=500)
    assert psi(ref, rng.normal(loc=1.0, size=500)) > 0.2 + psi_floor(500, 500)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)


def test_js_divergence_bounds():
    a = Counter({"red": 5, "shoe": 5})
    assert js_divergence(a, a) == pytest.approx(0.0)
    assert js_divergence(a, Counter({"blue": 3, "coat": 1})) == pytest.approx(1.0)
    mid = js_divergence(a, Counter({"red": 5, "boot": 5}))
    assert 0.3 < mid < 0.7


def test_terms_and_unseen_shares():
    assert terms("Red Shoes, size-42!") == ["red", "shoes", "size", "42"]
    ref_q = ["red shoe", "blue boot"]
    item_share, term_share = unseen_shares(ref_q, ["i1", "i2"], ["red boot", "winter kicks", "red shoe"],
                                           ["i1", "i9", "i9"])
    assert item_share == pytest.approx(2 / 3)
    assert term_share == pytest.approx(1 / 3)
    assert term_counts(ref_q)["red"] == 1
