from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.config import SplitConfig
from adapters.dataset import QueryGroup, Splits, build_groups, split, truncate_group
from adapters.errors import NotEnoughData
from tests.fixtures.model import true_relevance

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def ev(item: str, action: str, *, minute: int = 0, query: str = "red shoes", request: str | None = "r1",
       session: str | None = None, text: str | None = None) -> dict[str, Any]:
    return {"event_id": f"{item}-{action}-{minute}", "ts": T0 + timedelta(minutes=minute), "query": query,
            "item_id": item, "action": action, "item_text": text, "request_id": request, "session_hash": session}


CATALOG = {"a": "text a", "b": "text b", "c": "text c", "d": "text d"}


def test_labels_are_the_best_action_per_item() -> None:
    events = [ev("b", "impression"), ev("a", "impression"), ev("a", "click", minute=1),
              ev("a", "purchase", minute=2), ev("b", "add_to_cart", minute=3), ev("c", "impression"),
              ev("c", "click", minute=1), ev("a", "impression", minute=4)]
    [g] = build_groups(events, CATALOG.get)
    assert g.key == "r:r1"
    assert g.item_ids == ("a", "b", "c")  # ordered by item id, not shown position
    assert g.labels == (3, 2, 1)
    assert g.texts == ("text a", "text b", "text c")
    assert g.ts == T0


def test_group_keys_request_then_session_then_query_and_day() -> None:
    events = [
        ev("a", "click", request=None, session="s1", query="Red  Shoes"),
        ev("b", "impression", request=None, session="s1", query="red shoes", minute=5),  # same group
        ev("a", "click", request=None, session=None, query="blue hat"),
        ev("b", "impression", request=None, session=None, query="blue hat", minute=30),
        ev("c", "click", request=None, session=None, query="blue hat", minute=60 * 24),  # next day
        ev("d", "impression", request=None, session=None, query="blue hat", minute=60 * 24 + 1),
    ]
    keys = [g.key for g in build_groups(events, CATALOG.get)]
    assert sorted(keys) == ["q:blue hat:2026-03-01", "q:blue hat:2026-03-02", "s:s1:red shoes"]


def test_unrankable_groups_and_textless_items_are_dropped() -> None:
    events = [
        ev("a", "click", request="one-item"),
        ev("a", "impression", request="no-positive"), ev("b", "impression", request="no-positive"),
        ev("a", "click", request="all-equal"), ev("b", "click", request="all-equal"),
        ev("a", "click", request="textless"), ev("x", "impression", request="textless"),
        ev("a", "click", request="ok"), ev("x", "impression", request="ok", text="inline text"),
        ev("b", "impression", request="ok"), ev("b", "dwell", request="ok"),  # unknown action ignored
    ]
    groups = build_groups(events, CATALOG.get)
    assert [g.key for g in groups] == ["r:ok"]
    assert groups[0].texts == ("text a", "text b", "inline text")
    assert groups[0].labels == (1, 0, 0)


def test_catalog_is_asked_once_per_item() -> None:
    calls: list[str] = []

    def text_of(item: str) -> str | None:
        calls.append(item)
        return CATALOG.get(item)

    events = [ev("a", "click", request=f"r{i}") for i in range(3)] + [ev("b", "impression", request=f"r{i}")
                                                                      for i in range(3)]
    assert len(build_groups(events, text_of)) == 3
    assert sorted(calls) == ["a", "b"]


def _groups(n: int, prefix: str = "g", start: datetime = T0) -> list[QueryGroup]:
    return [QueryGroup(f"{prefix}{i}", f"q{i}", start + timedelta(hours=i), ("a", "b"), ("ta", "tb"), (1, 0))
            for i in range(n)]


def test_split_is_time_based_and_disjoint() -> None:
    groups = _groups(50)
    shuffled = random.Random(1).sample(groups, len(groups))
    s = split(shuffled, SplitConfig(holdout_fraction=0.2, regression_fraction=0.1, replay_ratio=0.0,
                                    regression_sample="oldest"))
    assert len(s.holdout) == 10 and len(s.regression) == 5 and len(s.train) == 35
    assert max(g.ts for g in s.train) < min(g.ts for g in s.holdout)
    assert max(g.ts for g in s.regression) < min(g.ts for g in s.train)
    keys = [g.key for part in (s.train, s.holdout, s.regression) for g in part]
    assert len(keys) == len(set(keys)) == 50
    assert s.holdout_from == s.holdout[0].ts


def test_selection_slice_is_the_newest_before_the_holdout_and_leaves_regression_alone() -> None:
    groups = _groups(100)
    base = SplitConfig(holdout_fraction=0.2, regression_fraction=0.1, replay_ratio=0.0)
    plain = split(groups, base)
    s = split(groups, base.model_copy(update={"selection_fraction": 0.15}))
    assert plain.selection == [] and len(s.selection) == 15
    assert [g.key for g in s.holdout] == [g.key for g in plain.holdout]
    assert [g.key for g in s.regression] == [g.key for g in plain.regression]  # the spread sample is unchanged
    assert max(g.ts for g in s.selection) < min(g.ts for g in s.holdout)
    assert min(g.ts for g in s.selection) > max(g.ts for g in s.train)
    assert [g.key for g in s.train + s.selection] == [g.key for g in plain.train]
    keys = [g.key for part in (s.train, s.selection, s.holdout, s.regression) for g in part]
    assert len(keys) == len(set(keys)) == 100
    tiny = split(_groups(3), SplitConfig(holdout_fraction=0.2, regression_fraction=0.0, selection_fraction=0.4))
    assert len(tiny.selection) == 1 and len(tiny.train) == 1  # training keeps at least one group
    with pytest.raises(ValueError, match="leave data to train on"):
        SplitConfig(holdout_fraction=0.4, regression_fraction=0.2, selection_fraction=0.2)


def test_split_fixed_regression_cutoff() -> None:
    groups = _groups(20)
    s = split(groups, SplitConfig(holdout_fraction=0.2, regression_fraction=0.4),
              regression_before=T0 + timedelta(hours=3))
    assert [g.key for g in s.regression] == ["g0", "g1", "g2"]


def test_replay_samples_older_groups_deterministically() -> None:
    new = _groups(30, start=T0 + timedelta(days=10))
    old = _groups(40, prefix="old")
    cfg = SplitConfig(holdout_fraction=0.2, regression_fraction=0.0, replay_ratio=0.5, seed=3)
    a = split(new, cfg, previous=old)
    b = split(new, cfg, previous=list(reversed(old)))
    assert a.replay_count == round(0.5 * 24) == 12
    assert len(a.train) == 24 + 12
    assert [g.key for g in a.train] == [g.key for g in b.train]
    assert {g.key for g in a.holdout}.isdisjoint(g.key for g in a.train)
    c = split(new, SplitConfig(holdout_fraction=0.2, regression_fraction=0.0, replay_ratio=0.5, seed=4), old)
    assert [g.key for g in c.train] != [g.key for g in a.train]


def test_replay_never_takes_groups_newer_than_the_holdout() -> None:
    new = _groups(10)
    future = _groups(10, prefix="future", start=T0 + timedelta(days=30))
    s = split(new, SplitConfig(replay_ratio=1.0, regression_fraction=0.0), previous=future)
    assert s.replay_count == 0


def test_split_needs_two_groups_and_unique_keys() -> None:
    with pytest.raises(NotEnoughData):
        split(_groups(1), SplitConfig())
    with pytest.raises(ValueError, match="unique"):
        split(_groups(3) + _groups(1), SplitConfig())


def test_truncate_keeps_positives_and_order() -> None:
    labels = (0, 3, 0, 0, 1, 0, 2, 0, 0, 0)
    ids = tuple(f"i{k}" for k in range(10))
    g = QueryGroup("k", "q", T0, ids, ids, labels)
    t = truncate_group(g, 5, random.Random(0))
    assert len(t) == 5
    assert {"i1", "i4", "i6"} <= set(t.item_ids)
    assert list(t.item_ids) == sorted(t.item_ids, key=ids.index)
    assert t.labels == tuple(labels[ids.index(i)] for i in t.item_ids)
    # More positives than room: the best positives stay, with one negative left to rank against.
    many = QueryGroup("k", "q", T0, ids, ids, (1, 1, 3, 1, 2, 1, 0, 1, 1, 0))
    t2 = truncate_group(many, 3, random.Random(0))
    assert sorted(t2.labels) == [0, 2, 3]
    assert truncate_group(g, 20, random.Random(0)) is g


def test_synthetic_fixture_has_ground_truth(synthetic_groups: list[QueryGroup], synthetic_splits: Splits) -> None:
    assert len(synthetic_groups) >= 120
    assert all(len(g) >= 2 and max(g.labels) > 0 for g in synthetic_groups)
    assert true_relevance("winter", "jacket", {"category": "jacket", "brand": "Fjord", "season": "winter"}) == 3
    assert true_relevance("", "jacket", {"category": "hat", "brand": "Fjord", "season": "winter"}) == 0
    assert synthetic_splits.train and synthetic_splits.holdout and synthetic_splits.regression


def _page(key: str, items: list[str], clicked: str) -> QueryGroup:
    return QueryGroup(key=key, query=f"q {key}", ts=T0, item_ids=tuple(items), texts=tuple(f"text {i}" for i in items),
                      labels=tuple(int(i == clicked) for i in items), positions=tuple(range(len(items))))


def test_random_negatives_come_from_other_pages_unclicked_and_aligned() -> None:
    from adapters.dataset import NegativePool

    pages = [_page("a", ["i1", "i2", "i3"], "i2"), _page("b", ["i3", "i4", "i5", "i6"], "i4"),
             _page("c", ["i7", "i8"], "i7")]
    pool = NegativePool(pages)
    grown = pool.with_random_negatives(pages[0], 3, random.Random(1))
    assert grown.item_ids[:3] == pages[0].item_ids and grown.labels[:3] == pages[0].labels
    added = grown.item_ids[3:]
    assert len(added) == 3 and not set(added) & set(pages[0].item_ids) and len(set(added)) == 3
    assert grown.labels[3:] == (0, 0, 0) and grown.texts[3:] == tuple(f"text {i}" for i in added)
    assert grown.positions is not None and len(grown.positions) == len(grown) == 6
    assert grown == pool.with_random_negatives(pages[0], 3, random.Random(1))  # deterministic for a seed
    # k = 0 leaves the group alone and draws nothing, so runs without negatives are unchanged
    rng = random.Random(5)
    assert pool.with_random_negatives(pages[0], 0, rng) is pages[0] and rng.random() == random.Random(5).random()
    # never more than the pool holds outside the page
    assert len(pool.with_random_negatives(pages[2], 50, random.Random(2))) == 8


def test_random_negatives_never_bring_back_what_the_cut_left_out() -> None:
    from adapters.dataset import NegativePool, truncate_group

    # a page with more clicked items than a training group keeps: the cut leaves some positives out
    items = [f"p{k}" for k in range(12)] + ["n1", "n2"]
    page = QueryGroup(key="big", query="q big", ts=T0, item_ids=tuple(items), texts=tuple(f"text {i}" for i in items),
                      labels=tuple(int(i.startswith("p")) for i in items), positions=tuple(range(len(items))))
    pool = NegativePool([page, _page("other", ["o1", "o2", "o3"], "o1")])
    for seed in range(20):
        rng = random.Random(seed)
        cut = truncate_group(page, 6, rng)
        assert set(page.item_ids) - set(cut.item_ids)  # something was left out
        grown = pool.with_random_negatives(cut, 3, rng, page)
        assert set(grown.item_ids[len(cut):]) <= {"o1", "o2", "o3"}, grown.item_ids
    # without `page` the pool does offer left-out positives, labelled 0: the check above is not vacuous
    offered: set[str] = set()
    for seed in range(20):
        rng = random.Random(seed)
        cut = truncate_group(page, 6, rng)
        grown = pool.with_random_negatives(cut, 3, rng)
        offered |= set(grown.item_ids[len(cut):]) & {i for i in page.item_ids if i.startswith("p")}
    assert offered
