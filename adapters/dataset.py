"""From feedback events to labelled query groups, and the time-based train/holdout/regression split.

A query group is one result page: the items a user saw for one query, each with a graded label
(purchase 3, add_to_cart 2, click 1, impression without interaction 0; the best action per item wins).
Groups are atomic: no group is ever split across train, holdout and regression.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from adapters.config import SplitConfig
from adapters.errors import NotEnoughData

__all__ = [
    "ACTION_GRADES",
    "EXPLORE_FIELD",
    "RANKED_POSITION_FIELD",
    "QueryGroup",
    "Splits",
    "build_groups",
    "in_regression_sample",
    "split",
    "truncate_group",
]

ACTION_GRADES: dict[str, int] = {"impression": 0, "click": 1, "add_to_cart": 2, "purchase": 3}

EXPLORE_FIELD = "explore"
"""Event field that marks a randomized page: the scorer's exploration changed the order it served
(`"shuffle"`: the top k were shuffled uniformly; `"swap"`: random adjacent pairs were swapped). Every event
of such a page carries it; events of ordinary pages omit it (or carry None/""/False)."""

RANKED_POSITION_FIELD = "ranked_position"
"""Event field, on randomized pages only: the 0-based position the ranker had given the item before the
exploration moved it to `position`. Optional: a uniform shuffle needs no ranked position."""


@dataclass(frozen=True)
class QueryGroup:
    """One query's items with graded labels. `ts` is the group's first event (when the query ran).

    `positions` is the 0-based position each item was shown at (None when the events carry no position:
    position-bias correction is then off for this group). `explore` names the randomization applied to
    the page (see `EXPLORE_FIELD`), and `ranked_positions` where the ranker had put each item before it.
    """

    key: str
    query: str
    ts: datetime
    item_ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    positions: tuple[int, ...] | None = None
    explore: str | None = None
    ranked_positions: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Splits:
    """Training input. `train` includes `replay_count` replayed older groups; `holdout` is the newest slice;
    `selection`, when the split carves one, is what early stopping reads instead of the holdout."""

    train: list[QueryGroup]
    holdout: list[QueryGroup]
    regression: list[QueryGroup] = field(default_factory=list)
    replay_count: int = 0
    holdout_from: datetime | None = None
    selection: list[QueryGroup] = field(default_factory=list)


def _norm(query: str) -> str:
    return " ".join(query.casefold().split())


def _group_key(ev: Mapping[str, Any]) -> str:
    # A request id names one result page exactly; without it, a session's pages for one query are
    # merged (refinements of one intent); without a session, one query on one day.
    if ev.get("request_id"):
        return f"r:{ev['request_id']}"
    if ev.get("session_hash"):
        return f"s:{ev['session_hash']}:{_norm(ev['query'])}"
    ts: datetime = ev["ts"]
    return f"q:{_norm(ev['query'])}:{ts.date().isoformat()}"


@dataclass
class _Acc:
    query: str
    ts: datetime
    grades: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    ranked: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # items whose position came from an impression
    explore: str | None = None

    def add(self, ev: Mapping[str, Any], grade: int) -> None:
        """Fold one event of this page in: its grade, shown (and model) position, exploration mark, text."""
        item = str(ev["item_id"])
        self.grades[item] = max(grade, self.grades.get(item, 0))
        pos = _position(ev.get("position"))
        if pos is not None and (item not in self.positions or (ev["action"] == "impression" and item not in self.seen)):
            self.positions[item] = pos
            ranked = _position(ev.get(RANKED_POSITION_FIELD))
            if ranked is not None:
                self.ranked[item] = ranked
        if ev["action"] == "impression" and pos is not None:
            self.seen.add(item)
        mark = ev.get(EXPLORE_FIELD)
        if mark:
            self.explore = str(mark) if not isinstance(mark, bool) else "shuffle"
        if ev.get("item_text"):
            self.texts[item] = str(ev["item_text"])  # events arrive in time order per partition: newest wins

    def group(self, key: str, text_of: Callable[[str], str | None],
              catalog: dict[str, str | None]) -> QueryGroup | None:
        """The page as a QueryGroup (items with a text, by id), or None when it cannot rank."""
        ids, texts, labels = [], [], []
        for item in sorted(self.grades):
            text = self.texts.get(item)
            if not text:
                if item not in catalog:
                    catalog[item] = text_of(item)
                text = catalog[item]
            if text:
                ids.append(item)
                texts.append(text)
                labels.append(self.grades[item])
        if len(ids) < 2 or max(labels) <= 0 or len(set(labels)) < 2:
            return None
        shown = [self.positions.get(i) for i in ids]
        positions = tuple(p for p in shown if p is not None) if None not in shown else None
        if positions is not None and len(set(positions)) != len(positions):
            positions = None  # two items at one position: the log is inconsistent, do not correct
        before = [self.ranked.get(i) for i in ids]
        ranked_positions = tuple(r for r in before if r is not None) if positions and None not in before else None
        return QueryGroup(key, self.query, self.ts, tuple(ids), tuple(texts), tuple(labels), positions,
                          self.explore if positions else None, ranked_positions)


def _position(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        pos = int(value)
    except (TypeError, ValueError):
        return None
    return pos if pos >= 0 else None


def build_groups(
    events: Iterable[Mapping[str, Any]], text_of: Callable[[str], str | None]
) -> list[QueryGroup]:
    """Aggregate events into query groups, oldest first.

    Each event has event_id, ts, query, item_id, action, item_text (or None), request_id (or None) and
    session_hash (or None). An item's text is the newest non-empty `item_text` in its group, else
    `text_of(item_id)` (the catalog); items without any text are dropped since they cannot be scored.
    Unknown actions are ignored.

    Only groups that can rank are kept, for training and evaluation alike: at least two items, at least
    one positive, and at least two different labels. Other groups give every model the same NDCG
    (0 or 1), so they would only dilute the gate's paired comparison.

    Items are ordered by item id, not by the position they were shown at: metrics break score ties by
    this order (see `ranking_metrics`), and the shown position is correlated with clicks. The shown
    position travels separately (`QueryGroup.positions`, the item's first impression on the page, else its
    first event with a position) for position-bias correction; a group gets positions only when every
    kept item has one and no two items share one.
    """
    acc: dict[str, _Acc] = {}
    for ev in events:
        grade = ACTION_GRADES.get(str(ev["action"]))
        if grade is None:
            continue
        key = _group_key(ev)
        ts: datetime = ev["ts"]
        a = acc.get(key)
        if a is None:
            a = acc[key] = _Acc(query=str(ev["query"]), ts=ts)
        elif ts < a.ts:
            a.ts, a.query = ts, str(ev["query"])
        a.add(ev, grade)
    catalog: dict[str, str | None] = {}
    groups = [g for key, a in acc.items() if (g := a.group(key, text_of, catalog)) is not None]
    groups.sort(key=lambda g: (g.ts, g.key))
    return groups


def in_regression_sample(key: str, fraction: float, salt: int = 0) -> bool:
    """Whether group `key` belongs to the fixed regression sample: a hash of the key below `fraction`.

    The same key is in or out in every run (for one `salt`), whatever window the run reads, so the
    sample is spread evenly over time and a group held out for regression is never trained on.
    """
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split(
    groups: Sequence[QueryGroup],
    cfg: SplitConfig,
    previous: Sequence[QueryGroup] = (),
    *,
    regression_before: datetime | None = None,
) -> Splits:
    """Split by time: holdout = newest slice, regression = a fixed sample, train = the rest (+ replay).

    Regression sample, by `cfg.regression_sample`:
    - `"spread"` (default): every group older than the holdout, in `groups` or in `previous` (the window
      the champion trained on), whose key hashes into `regression_fraction` (`in_regression_sample`).
      Membership never changes between runs, so these groups are never trained on, by the champion or
      any later candidate, and they represent the champion's whole training window, not its oldest end.
    - `"oldest"`: the oldest `regression_fraction` of `groups`.
    Either way, `regression_before` instead takes every non-holdout group of `groups` older than it.
    Selection (`cfg.selection_fraction` > 0): the newest `selection_fraction` of `groups` before the holdout,
    outside the regression sample, is held out of training for early stopping, so the checkpoint is chosen
    on groups that the gate does not read.
    Replay samples `round(replay_ratio * len(train))` groups from `previous` (older groups outside this
    window), never one that is already in a split, in the regression sample, or not older than the
    holdout. Deterministic for `cfg.seed`.
    """
    ordered = sorted(groups, key=lambda g: (g.ts, g.key))
    keys = [g.key for g in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError("query groups must have unique keys")
    n = len(ordered)
    if n < 2:
        raise NotEnoughData(f"{n} query groups; need at least 2 to split into train and holdout")
    n_hold = max(1, round(n * cfg.holdout_fraction))
    older, holdout = ordered[: n - n_hold], ordered[n - n_hold :]
    holdout_from = holdout[0].ts
    used = set(keys)
    spread = regression_before is None and cfg.regression_sample == "spread"

    def sampled(g: QueryGroup) -> bool:
        return in_regression_sample(g.key, cfg.regression_fraction, cfg.regression_salt)

    if regression_before is not None:
        regression = [g for g in older if g.ts < regression_before]
    elif spread:
        regression = [g for g in older if sampled(g)]
        regression += [g for g in previous if g.key not in used and g.ts < holdout_from and sampled(g)]
        regression.sort(key=lambda g: (g.ts, g.key))
    else:
        regression = older[: int(n * cfg.regression_fraction)]
    reg_keys = {g.key for g in regression}
    rest = [g for g in older if g.key not in reg_keys]
    n_sel = min(len(rest) - 1, max(1, round(n * cfg.selection_fraction))) if cfg.selection_fraction > 0 else 0
    train, selection = (rest[:-n_sel], rest[-n_sel:]) if n_sel > 0 else (rest, [])

    pool = [g for g in previous if g.key not in used and g.key not in reg_keys and g.ts < holdout_from
            and not (spread and sampled(g))]
    pool.sort(key=lambda g: (g.ts, g.key))  # sampling must not depend on the caller's order
    k = min(len(pool), round(cfg.replay_ratio * len(train)))
    replay = random.Random(cfg.seed).sample(pool, k) if k else []
    train_all = sorted(train + replay, key=lambda g: (g.ts, g.key))
    return Splits(train_all, holdout, regression, replay_count=k, holdout_from=holdout_from, selection=selection)


class NegativePool:
    """Items of the training set, to add to a group as off-page negatives (`with_random_negatives`)."""

    def __init__(self, groups: Sequence[QueryGroup]) -> None:
        seen: dict[str, str] = {}
        for g in groups:
            for item_id, text in zip(g.item_ids, g.texts, strict=True):
                seen.setdefault(item_id, text)
        self.items = sorted(seen.items())

    def with_random_negatives(self, group: QueryGroup, k: int, rng: random.Random,
                              page: QueryGroup | None = None) -> QueryGroup:
        """`group` plus up to `k` items of other pages, labelled 0 (not clicked). `page`: the whole group that
        `group` was cut from (`truncate_group`), whose items are never added: a positive that the cut left
        out must not come back as a negative.

        A page holds only what retrieval found for the query, so clicks teach the order among close
        candidates and nothing about products that do not match at all; a learner trained on pages alone
        can drift into ranking such products above relevant ones (the LoRA adapter did, in `bench learn`).
        Random items of other queries are irrelevant but for a small share of false negatives. Their
        gain is 0, so their inverse-propensity weight does not matter; they take position 0's."""
        if k <= 0 or not self.items:
            return group
        own = set(group.item_ids if page is None else group.item_ids + page.item_ids)
        picked: list[tuple[str, str]] = []
        for _ in range(4 * k):
            if len(picked) == k:
                break
            cand = self.items[rng.randrange(len(self.items))]
            if cand[0] not in own:
                own.add(cand[0])
                picked.append(cand)
        if not picked:
            return group
        n = len(picked)
        return replace(
            group,
            item_ids=group.item_ids + tuple(i for i, _ in picked),
            texts=group.texts + tuple(t for _, t in picked),
            labels=group.labels + (0,) * n,
            positions=None if group.positions is None else group.positions + (0,) * n,
            ranked_positions=None if group.ranked_positions is None else group.ranked_positions + (0,) * n,
        )


def truncate_group(group: QueryGroup, max_items: int, rng: random.Random) -> QueryGroup:
    """At most `max_items` items: all positives (best first, leaving room for one negative), then
    negatives sampled with `rng`. Items keep their order in the group."""
    if len(group) <= max_items:
        return group
    idx = range(len(group))
    pos = sorted((i for i in idx if group.labels[i] > 0), key=lambda i: -group.labels[i])
    neg = [i for i in idx if group.labels[i] == 0]
    pos = pos[: max_items - 1] if neg else pos[:max_items]
    keep = sorted(pos + rng.sample(neg, min(len(neg), max_items - len(pos))))
    return replace(
        group,
        item_ids=tuple(group.item_ids[i] for i in keep),
        texts=tuple(group.texts[i] for i in keep),
        labels=tuple(group.labels[i] for i in keep),
        positions=None if group.positions is None else tuple(group.positions[i] for i in keep),
        ranked_positions=None if group.ranked_positions is None else tuple(group.ranked_positions[i] for i in keep),
    )
