"""Judged-set evaluation (`ranktune eval --judgements` core) on a hand-computed file, and the shop family:
determinism, ground truth, click traffic with positions, semi-synthetic clicks from judgements."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from adapters.dataset import build_groups
from adapters.judged import evaluate_judged, read_judgements
from adapters.propensity import estimate_randomized, max_relative_error
from daemon.tools.semi_synthetic import clicks_from_judgements
from daemon.tools.shops import FAMILY, ClickModel, FamilyShop, family_spec, with_policy

TSV = "query\titem_id\ttext\tgrade\nred shoes\ta\tred shoe\t2\nred shoes\tb\tblue hat\t0\nred shoes\tc\tred boot\t1\n" \
      "tent\td\tbig tent\t0\ntent\te\ttent two\t3\nsame\tf\tx\t1\nsame\tg\ty\t1\n"


def _score(query: str, texts: Sequence[str]) -> np.ndarray:
    # a fixed scorer: alphabetical order of the texts, best first
    return -np.argsort(np.argsort(list(texts))).astype(float)


def test_eval_judgements_tsv_by_hand(tmp_path: Path) -> None:
    f = tmp_path / "judged.tsv"
    f.write_text(TSV)
    judged = read_judgements(f)
    assert [j.query for j in judged] == ["red shoes", "tent", "same"]
    res = evaluate_judged(_score, judged, samples=500)
    # red shoes: order blue hat(0), red boot(1), red shoe(2) -> DCG = 1/log2(3) + 3/log2(4); ideal 3 + 1/log2(3)
    ndcg_rs = (1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))
    # tent: order big tent(0), tent two(3) -> DCG = 7/log2(3); ideal 7
    ndcg_tent = 1 / math.log2(3)
    assert res.n_queries == 2 and res.n_skipped == 1  # "same" has one grade only
    assert res.ndcg10 == pytest.approx((ndcg_rs + ndcg_tent) / 2)
    assert res.mrr == pytest.approx((1 / 2 + 1 / 2) / 2)
    lo, hi = res.ndcg10_ci
    assert min(ndcg_rs, ndcg_tent) - 1e-9 <= lo <= res.ndcg10 <= hi <= max(ndcg_rs, ndcg_tent) + 1e-9


def test_eval_judgements_jsonl_both_layouts(tmp_path: Path) -> None:
    f = tmp_path / "judged.jsonl"
    rows = [{"query": "tent", "item_id": "d", "text": "big tent", "grade": 0},
            {"query": "tent", "items": [{"item_id": "e", "text": "tent two", "grade": 3}]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    [tent] = read_judgements(f)
    assert tent.item_ids == ("d", "e") and tent.grades == (0, 3)
    assert evaluate_judged(lambda q, t: np.array([0.0, 1.0]), [tent]).ndcg10 == pytest.approx(1.0)
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\ti\tt\t-1\n")
    with pytest.raises(ValueError):
        read_judgements(bad)


def test_family_is_diverse_and_deterministic() -> None:
    assert len(FAMILY) >= 6
    assert {s.domain for s in FAMILY} >= {"fashion", "electronics", "home"}
    assert {s.policy for s in FAMILY} == {"random", "lexical", "closed"}
    etas = [s.clicks.eta for s in FAMILY]
    assert min(etas) <= 0.5 and max(etas) >= 1.2
    spec = family_spec("electronics-random")
    a, b = FamilyShop(spec, 3), FamilyShop(spec, 3)
    assert [e["event_id"] for e in a.traffic(20)] == [e["event_id"] for e in b.traffic(20)]
    assert list(a.traffic(5)) == list(b.traffic(5))
    assert a.items != FamilyShop(spec, 4).items


def test_traffic_has_positions_and_clicks_follow_the_click_model() -> None:
    spec = with_policy(family_spec("electronics-random"), clicks=ClickModel(eta=1.0, noise=0.0))
    events = list(FamilyShop(spec, 1).traffic(3000))
    groups = build_groups(events, lambda _: None)
    assert groups and all(g.positions is not None for g in groups)
    imp = np.zeros(10)
    clk = np.zeros(10)
    for e in events:
        (imp if e["action"] == "impression" else clk if e["action"] == "click" else np.zeros(10))[e["position"]] += 1
    ctr = clk / imp
    # random order: the click rate falls with position like the examination curve 1/(k+1)
    assert ctr[0] > 3 * ctr[9] and ctr[1] / ctr[0] == pytest.approx(0.5, rel=0.25)


def test_closed_loop_needs_an_order_and_uses_it() -> None:
    spec = family_spec("electronics-closed")
    shop = FamilyShop(spec, 1)
    with pytest.raises(ValueError):
        next(shop.traffic(1))
    # a scorer that prefers the longest text: every page shows its candidates longest first
    events = [e for e in shop.traffic(30, order=lambda q, t: [len(x) for x in t]) if e["action"] == "impression"]
    pages: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        pages.setdefault(e["request_id"], []).append((e["position"], len(e["item_text"])))
    for shown in pages.values():
        lengths = [n for _, n in sorted(shown)]
        assert lengths == sorted(lengths, reverse=True)


def test_judgements_are_graded_and_unseen() -> None:
    shop = FamilyShop(family_spec("home-lexical-trust"), 2)
    judged = shop.judgements(20, 20)
    assert len(judged) == 20
    for j in judged:
        grades = [i["grade"] for i in j["items"]]
        assert max(grades) >= 2 and min(grades) == 0 and len(grades) <= 20
    traffic_queries = {e["query"] for e in shop.traffic(50)}
    assert len({j["query"] for j in judged} - traffic_queries) >= 15


def test_clicks_from_judgements_recover_the_position_curve() -> None:
    shop = FamilyShop(family_spec("fashion-lexical"), 1)
    judged = shop.judgements(30, 20)
    events = clicks_from_judgements(judged, 6000, ClickModel(eta=1.0, noise=0.0), explore_rate=1.0, seed=2)
    groups = build_groups(events, lambda _: None)
    assert all(g.explore == "shuffle" for g in groups)
    curve = estimate_randomized(groups)
    assert max_relative_error(curve.values, [1 / (k + 1) for k in range(10)]) < 0.25


def test_served_judgements_grade_the_candidates_the_shop_retrieves() -> None:
    shop = FamilyShop(family_spec("electronics-closed"), 3)
    served = shop.served_judgements(25)
    assert len(served) == 25 and len({s["query"] for s in served}) == 25
    by_id = {it.item_id: it for it in shop.items}
    for s in served:
        ids = [i["item_id"] for i in s["items"]]
        # the same set the shop retrieves for the query (retrieve=16 here), shuffled, with the hidden grades
        retrieved = {shop.items[i].item_id for i in shop.retrieve(s["query"], shop.spec.retrieve, None, 0.0)}
        assert set(ids) == retrieved and len(ids) == shop.spec.retrieve
        assert any(i["grade"] > 0 for i in s["items"])
        assert all(0 <= i["grade"] <= 3 and by_id[i["item_id"]].text == i["text"] for i in s["items"])
    assert served == shop.served_judgements(25)  # deterministic for (shop, seed)


def test_a_drifted_shop_is_the_same_in_every_process() -> None:
    """The post-drift taste must not depend on string hashing (PYTHONHASHSEED): `bench learn --drift` drew
    each drifted category's new feature in set order, so two runs of one command gave different shops."""
    import os
    import subprocess
    import sys

    code = ("from dataclasses import replace\n"
            "from daemon.tools.shops import FamilyShop, family_spec\n"
            "shop = FamilyShop(replace(family_spec('fashion-lexical'), drift_categories=0.5), 2)\n"
            "print(sorted(shop.drift_feature.items()))\n")
    root = Path(__file__).resolve().parents[2]
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": str(h), "PYTHONPATH": str(root)}).stdout
            for h in range(4)}
    assert len(outs) == 1, outs
