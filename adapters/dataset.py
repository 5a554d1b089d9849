"""From feedback events to labelled query groups, and the time-based train/holdout/regression split.

A query group is one result page: the items a user saw for one query, each with a graded label
(purchase 3, add_to_cart 2, click 1, impression without interaction 0; the best action per item wins).
Groups are atomic: no group is ever split across train, holdout and regression.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from adapters.config import SplitConfig
from adapters.errors import NotEnoughData

__all__ = ["ACTION_GRADES", "QueryGroup", "Splits", "build_groups", "split", "truncate_group"]

ACTION_GRADES: dict[str, int] = {"impression": 0, "click": 1, "add_to_cart": 2, "purchase": 3}


@dataclass(frozen=True)
class QueryGroup:
    """One query's items with graded labels. `ts` is the group's first event (when the query ran)."""

    key: str
    query: str
    ts: datetime
    item_ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Splits:
    """Training input. `train` includes `replay_count` replayed older groups; `holdout` is the newest slice."""

    train: list[QueryGroup]
    holdout: list[QueryGroup]
    regression: list[QueryGroup] = field(default_factory=list)
    replay_count: int = 0
    holdout_from: datetime | None = None


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
    this order (see `ranking_metrics`), and the shown position is correlated with clicks.
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
        item = str(ev["item_id"])
        a.grades[item] = max(grade, a.grades.get(item, 0))
        if ev.get("item_text"):
            a.texts[item] = str(ev["item_text"])  # events arrive in time order per partition: newest wins

    catalog: dict[str, str | None] = {}
    groups = []
    for key, a in acc.items():
        ids, texts, labels = [], [], []
        for item in sorted(a.grades):
            text = a.texts.get(item)
            if not text:
                if item not in catalog:
                    catalog[item] = text_of(item)
                text = catalog[item]
            if text:
                ids.append(item)
                texts.append(text)
                labels.append(a.grades[item])
        if len(ids) >= 2 and max(labels) > 0 and len(set(labels)) >= 2:
            groups.append(QueryGroup(key, a.query, a.ts, tuple(ids), tuple(texts), tuple(labels)))
    groups.sort(key=lambda g: (g.ts, g.key))
    return groups


def split(
    groups: Sequence[QueryGroup],
    cfg: SplitConfig,
    previous: Sequence[QueryGroup] = (),
    *,
    regression_before: datetime | None = None,
) -> Splits:
    """Split by time: regression = oldest slice, holdout = newest slice, train = the rest (+ replay).

    The regression slice is the oldest `regression_fraction` of `groups`, or, to keep it fixed across
    runs, every non-holdout group older than `regression_before`. Replay samples
    `round(replay_ratio * len(train))` groups from `previous` (older groups outside this window), never
    one that is already in a split or not older than the holdout. Deterministic for `cfg.seed`.
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
    if regression_before is not None:
        regression = [g for g in older if g.ts < regression_before]
    else:
        regression = older[: int(n * cfg.regression_fraction)]
    reg_keys = {g.key for g in regression}
    train = [g for g in older if g.key not in reg_keys]

    holdout_from = holdout[0].ts
    used = set(keys)
    pool = [g for g in previous if g.key not in used and g.ts < holdout_from]
    pool.sort(key=lambda g: (g.ts, g.key))  # sampling must not depend on the caller's order
    k = min(len(pool), round(cfg.replay_ratio * len(train)))
    replay = random.Random(cfg.seed).sample(pool, k) if k else []
    train_all = sorted(train + replay, key=lambda g: (g.ts, g.key))
    return Splits(train_all, holdout, regression, replay_count=k, holdout_from=holdout_from)


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
    )
