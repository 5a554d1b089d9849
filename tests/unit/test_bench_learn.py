"""`ranktune bench learn` is registered and runs end to end on its smallest configuration (a smoke test: the
real bench is run by hand, its numbers go in the README, never into a test)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from adapters.dataset import build_groups
from daemon.cli import main


@pytest.mark.slow
def test_bench_learn_smallest_config_gives_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lines = tmp_path / "learn.json", tmp_path / "learn.jsonl"
    code = main(["bench", "learn", "--shops", "fashion-lexical", "--seeds", "1", "--log-pages", "60",
                 "--train-pages", "40", "--judged-queries", "4", "--candidates", "8", "--model", "proxy",
                 "--learners", "naive,corrected", "--quantization", "none", "--out", str(out), "--jsonl", str(lines)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc == json.loads(capsys.readouterr().out)
    assert doc["benchmark"] == "learn" and doc["options"]["log_pages"] == 60 and len(doc["results"]) == 1
    r = doc["results"][0]
    assert (r["shop"], r["seed"]) == ("fashion-lexical", 1) and set(r["learners"]) == {"zero-shot", "naive",
                                                                                          "corrected"}
    for learner in ("naive", "corrected"):
        cell = r["learners"][learner]
        assert 0.0 <= cell["gt_ndcg10"] <= 1.0 and isinstance(cell["fair_gate"], bool)
        assert cell["min_detectable_gain"] >= 0.0
        assert 0.0 <= cell["gt_served_ndcg10"] <= 1.0 and cell["gt_served_gain_se"] >= 0.0
        assert cell["gt_served_gain"] == pytest.approx(cell["gt_served_ndcg10"]
                                                       - r["learners"]["zero-shot"]["gt_served_ndcg10"])
    assert r["n_served"] == 4
    assert len(r["propensity"]["estimated"]) == len(r["propensity"]["true"]) == 10
    assert r["promoted"]["learner"] in ("zero-shot", "corrected")
    assert "| fashion-lexical | lexical |" in doc["table"] and "**promoted**" in doc["table"]
    assert "lost: " in doc["table"]
    assert json.loads(lines.read_text().splitlines()[0]) == r  # appended as it ran


def test_the_table_counts_only_promotions_that_lost_beyond_two_standard_errors() -> None:
    from daemon.tools.bench_learn import markdown

    def result(seed: int, promoted: dict[str, object]) -> dict[str, object]:
        cell = {"gt_ndcg10": 0.9, "gt_gain": 0.0, "gt_served_gain": 0.0, "fair_gate": True, "raw_gate": False,
                "train_s": 1.0}
        return {"shop": "s", "seed": seed, "policy": "closed", "eta": 1.0,
                "learners": {"zero-shot": {"gt_ndcg10": 0.9, "train_s": 0.0}, "corrected": cell},
                "promoted": {"gt_ndcg10": 0.9, **promoted},
                "propensity": {"method": "randomized", "max_rel_error_1_10": 0.1, "estimated": [1.0] * 5,
                               "true": [1.0] * 5}}

    rows = [
        result(1, {"learner": "corrected", "gt_gain": -0.03, "gt_gain_se": 0.01,  # lost: -0.03 + 0.02 < 0
                   "gt_served_gain": -0.01, "gt_served_gain_se": 0.01}),  # within noise
        result(2, {"learner": "corrected", "gt_gain": -0.01, "gt_gain_se": 0.01,
                   "gt_served_gain": -0.05, "gt_served_gain_se": 0.01}),  # lost on served pages only
        result(3, {"learner": "zero-shot", "gt_gain": 0.0}),  # not promoted: never a loss
    ]
    assert "lost: 1/1 of 2" in markdown(rows)


@pytest.mark.slow
def test_bench_learn_drift_reports_both_ground_truths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "learn", "--drift", "--shops", "fashion-brand-closed", "--seeds", "2", "--log-pages", "80",
                 "--train-pages", "60", "--judged-queries", "6", "--candidates", "8", "--model", "proxy",
                 "--quantization", "none", "--out", str(tmp_path / "drift.json")])
    assert code == 0
    [r] = json.loads(capsys.readouterr().out)["results"]
    for prefix in ("", "served_"):
        assert r[f"{prefix}drifted_n"] + r[f"{prefix}unchanged_n"] == 12
        for label in ("drifted", "unchanged"):
            if r[f"{prefix}{label}_n"] >= 2:
                assert r[f"{prefix}{label}_new_vs_old"] == pytest.approx(
                    r[f"{prefix}{label}_new_champion"] - r[f"{prefix}{label}_champion"])
                assert r[f"{prefix}{label}_new_vs_old_se"] >= 0.0
    assert len(r["propensity_methods"]) == 2  # before and after the drift
    assert all(m in ("randomized", "harvested", "regression_em") or m.startswith("prior:")
               for m in r["propensity_methods"])


def test_min_slot_repeats_decides_between_harvesting_and_regression_em() -> None:
    from daemon.tools.bench_learn_models import estimate_curve
    from daemon.tools.shops import FamilyShop, family_spec

    # a random-order shop: every (query, item) pair is shown at random positions, but only about twice
    shop = FamilyShop(family_spec("electronics-random"), 1)
    groups = build_groups(list(shop.traffic(1500, order=lambda q, t: np.zeros(len(t)))), lambda _: None)

    def overlap(q: str, texts: Sequence[str]) -> np.ndarray:  # a relevance feature: shared words
        words = set(q.lower().split())
        return np.array([len(words & set(t.lower().split())) for t in texts], dtype=np.float64)

    default = estimate_curve(groups, 10, overlap, {})
    harvested = estimate_curve(groups, 10, overlap, {"min_slot_repeats": 0})
    assert harvested.method == "harvested" and 2 <= harvested.slot_repeats < 3 and harvested.n_clicks >= 300
    assert default.method == "regression_em"


def test_the_stand_in_stops_early_by_the_daemons_rule() -> None:
    """The bench's stand-in learner evaluates and stops as the daemon's training does: every
    `TrainConfig.eval_every_steps` steps, and after `TrainConfig.patience` evaluations without a gain (a
    holdout that no model can improve: each page shows one text twice). The bench's options leave both at
    the daemon's defaults unless given."""
    import zlib
    from datetime import UTC, datetime

    import numpy as np
    import torch

    from adapters.config import TrainConfig
    from adapters.dataset import QueryGroup, Splits
    from daemon.tools.bench_learn_models import train_overrides
    from daemon.tools.bench_learn_proxy import ProxyModel

    def embed(texts: list[str]) -> torch.Tensor:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]
        e = torch.as_tensor(np.stack(rows), dtype=torch.float32)
        return e / e.norm(dim=1, keepdim=True)

    def group(i: int, texts: tuple[str, ...], labels: tuple[int, ...]) -> QueryGroup:
        return QueryGroup(f"g{i}", f"query {i % 7}", datetime(2026, 1, 1, tzinfo=UTC), tuple(f"i{i}-{k}" for k in
                          range(len(texts))), texts, labels, tuple(range(len(texts))))

    train = [group(i, (f"item {i}", f"other {i}", f"third {i}"), (0, 1, 0)) for i in range(400)]
    holdout = [group(1000 + i, (f"same {i}", f"same {i}"), (1, 0)) for i in range(20)]
    assert "eval_every_steps" not in train_overrides({"eval_every": None, "random_negatives": None})
    cfg = TrainConfig(**train_overrides({"eval_every": 4}), random_negatives=0, seed=3)
    assert cfg.eval_every_steps == 4 and cfg.patience == TrainConfig().patience
    fit = ProxyModel(embed).fit(Splits(train, holdout), cfg, None)
    assert fit["best_step"] == 0 and fit["steps"] == cfg.patience * cfg.eval_every_steps


def test_the_drift_table_averages_seeds_and_shows_the_worst() -> None:
    from daemon.tools.bench_learn_drift import drift_markdown

    def row(seed: int, gate2: bool, change: float) -> dict[str, object]:
        parts = {f"{p}_{m}": 0.8 + 0.01 * seed for p in ("drifted", "unchanged")
                 for m in ("zero_shot", "champion", "new_champion")}
        return {"shop": "s", "seed": seed, "gate1": True, "gate2": gate2, **parts, "unchanged_new_vs_old": change,
                "served_unchanged_new_vs_old": 2 * change}

    table = drift_markdown([row(1, True, -0.004), row(2, False, 0.0)])
    assert table.splitlines()[2] == ("| s | 2/2 | 1/2 | 0.815 / 0.815 / 0.815 | 0.815 / 0.815 / 0.815 | "
                                     "-0.0020 (-0.0040) | -0.0040 (-0.0080) |")


def test_both_off_page_measures_score_each_group_once_through_the_bench_cache() -> None:
    """`bench learn` reports the pair share beside the gate's NDCG@10 change; both score the whole group, so
    its cache (`_memo`) sends each off-page group to the model once, and the values are those without it."""
    from datetime import datetime

    import numpy as np

    from adapters.dataset import QueryGroup
    from adapters.ranking_metrics import offpage_accuracy, offpage_ndcg_change
    from daemon.tools.bench_learn import _memo

    scores = {"a": 3.0, "b": 9.0, "c": 1.0, "x": 2.0, "y": 0.0}
    g = QueryGroup(key="k", query="q", ts=datetime(2026, 1, 1), item_ids=tuple("abcxy"), texts=tuple("abcxy"),
                   labels=(1, 0, 2, 0, 0))
    h = QueryGroup(key="h", query="r", ts=g.ts, item_ids=tuple("cbay"), texts=tuple("cbay"), labels=(0, 1, 0, 0))
    calls: list[tuple[str, tuple[str, ...]]] = []

    def model(query: str, texts: list[str]) -> np.ndarray:
        calls.append((query, tuple(texts)))
        return np.asarray([scores[t] for t in texts])

    cached = _memo(model)
    change, pairs = offpage_ndcg_change(cached, [g, h], [3, 3]), offpage_accuracy(cached, [g, h], [3, 3])
    assert sorted(calls) == [("q", tuple("abcxy")), ("r", tuple("cbay"))]
    calls.clear()
    assert change == offpage_ndcg_change(model, [g, h], [3, 3])
    assert pairs == offpage_accuracy(model, [g, h], [3, 3]) == [0.75, 1.0]  # h: b (clicked) above y
