"""Semi-synthetic click traffic from any judged set (a family shop's or an operator's file): the protocol of
unbiased learning to rank (`ranktune simulate --from-judgements`)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from adapters.dataset import EXPLORE_FIELD, RANKED_POSITION_FIELD
from daemon.tools.shop_specs import ClickModel
from daemon.tools.shops import _T0, CART_GIVEN_CLICK, OrderFn

__all__ = ["clicks_from_judgements"]


def clicks_from_judgements(
    judged: Sequence[Mapping[str, Any]],
    n_pages: int,
    clicks: ClickModel,
    *,
    page_size: int = 10,
    order: OrderFn | None = None,
    seed: int = 0,
    explore_rate: float = 0.0,
    start: datetime = _T0,
) -> list[dict[str, Any]]:
    """Semi-synthetic click traffic from a judged set (Joachims et al. 2017; ULTRA's protocol).

    Each page draws a judged query, orders its judged items by `order(query, texts)` (the logging ranker;
    None: random order), shows the top `page_size`, and simulates `clicks` from the true grades (capped at
    3). Returns feedback events for `dataset.build_groups`, each with its hidden `grade`.
    """
    if not judged:
        raise ValueError("no judged queries")
    rng = random.Random(f"judged:{seed}")
    out: list[dict[str, Any]] = []
    ts = start
    for page in range(n_pages):
        q = judged[rng.randrange(len(judged))]
        items = list(q["items"])
        if order is None:
            rng.shuffle(items)
        else:
            scores = np.asarray(order(str(q["query"]), [str(it["text"]) for it in items]), dtype=np.float64)
            items = [items[j] for j in np.argsort(-scores, kind="stable")]
        shown = items[:page_size]
        ranked = list(range(len(shown)))
        explore = explore_rate > 0 and rng.random() < explore_rate
        if explore:
            rng.shuffle(ranked)
            shown = [shown[r] for r in ranked]
        rid = f"judged-{seed}-{page:06d}"
        ts += timedelta(seconds=rng.uniform(1, 20))
        for pos, it in enumerate(shown):
            grade = max(0, min(3, int(it["grade"])))
            base = {"ts": ts, "query": str(q["query"]), "item_id": str(it["item_id"]), "position": pos,
                    "request_id": rid, "session_hash": None, "item_text": str(it["text"]), "grade": grade}
            if explore:
                base[EXPLORE_FIELD] = "shuffle"
                base[RANKED_POSITION_FIELD] = ranked[pos]
            out.append({**base, "event_id": f"{rid}-{pos}-i", "action": "impression"})
            if rng.random() < clicks.p_click(pos, grade):
                out.append({**base, "event_id": f"{rid}-{pos}-c", "action": "click"})
                if rng.random() < CART_GIVEN_CLICK[grade]:
                    out.append({**base, "event_id": f"{rid}-{pos}-a", "action": "add_to_cart"})
    return out
