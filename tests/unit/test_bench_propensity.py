"""`ranktune bench propensity`: the randomized estimator's error on explored pages of the family's shops."""

from __future__ import annotations

import argparse

from daemon.settings import Settings
from daemon.tools import bench_propensity as bp
from daemon.tools.shop_specs import family_spec


def test_explored_spec_explores_every_page_without_a_model() -> None:
    closed = family_spec("fashion-brand-closed")
    spec = bp.explored_spec(closed, noise=0.0)
    assert spec.explore_rate == 1.0 and spec.policy == "lexical" and spec.clicks.noise == 0.0
    assert spec.clicks.eta == closed.clicks.eta and spec.name == closed.name
    kept = bp.explored_spec(family_spec("electronics-random"))
    assert kept.policy == "random" and kept.clicks.noise == family_spec("electronics-random").clicks.noise


def test_without_click_noise_more_explored_pages_bring_the_error_under_20_percent() -> None:
    spec = bp.explored_spec(family_spec("fashion-brand-closed"), noise=0.0)
    few = [bp.propensity_error(spec, seed, 200)["error"] for seed in (1, 2)]
    many = [bp.propensity_error(spec, seed, 3000) for seed in (1, 2)]
    assert all(m["error"] < 0.2 for m in many), many
    assert max(m["error"] for m in many) < min(few), (few, many)
    assert all(m["pages_kept"] > 1500 and m["informative_clicks"] > 3000 for m in many)


def test_run_reports_each_shop_and_page_count() -> None:
    args = argparse.Namespace(shops="electronics-closed,home-random-noisy", pages="150,300", seeds="1,2",
                              noise=None)
    out = bp.run(args, Settings.load(None))
    rows = out["rows"]
    assert [(r["shop"], r["explored_pages"]) for r in rows] == [
        ("electronics-closed", 150), ("electronics-closed", 300), ("home-random-noisy", 150),
        ("home-random-noisy", 300)]
    for r in rows:
        assert len(r["max_rel_error_1_10"]) == 2 and r["within_20pct"] == sum(e <= 0.2 for e in r["max_rel_error_1_10"])
        assert r["noise"] == family_spec(r["shop"]).clicks.noise and r["pages_kept_mean"] <= r["explored_pages"]
