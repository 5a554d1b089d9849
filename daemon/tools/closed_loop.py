"""Closed-loop simulation: the live scorer orders every simulated result page, as a real shop's front end does.

`ScorerOrder(url)` is a `daemon.tools.simulate.PageOrder`: it posts the page's candidates to `/v1/score`
and shows them in the order the response lists them. When the scorer explored (its response says
`explore: true`, names the mode and lists a perturbed order on purpose), the page's events carry
`explore: true` and each item's model rank as `ranked_position` (`rank` - 1), so they can feed the
randomized propensity estimator. When the scorer cannot answer, the page falls
back to the retrieval order (a shop keeps serving when its re-ranker is down) and the fallback is counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import httpx

from daemon.tools.simulate import Served

log = logging.getLogger(__name__)


class ScorerOrder:
    """Orders pages with `POST {url}/v1/score`; one keep-alive connection, `timeout_s` per request."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        # `client`: any httpx client for `url` (tests pass FastAPI's TestClient); closed with this object
        self._client = client if client is not None else httpx.Client(base_url=self.url, timeout=timeout_s)
        self.counts: Counter[str] = Counter()  # pages ordered by the scorer, explored, fallbacks
        self.versions: Counter[str] = Counter()  # adapter versions that ordered pages

    def __call__(self, query: str, items: list[tuple[str, str]]) -> Served:
        body = {"query": query, "items": [{"item_id": i, "text": t} for i, t in items]}
        try:
            resp = self._client.post("/v1/score", json=body)
            resp.raise_for_status()
            doc: dict[str, Any] = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.counts["fallback"] += 1
            if self.counts["fallback"] in (1, 10, 100) or self.counts["fallback"] % 1000 == 0:
                log.warning("scorer at %s did not order a page (%s); shown in retrieval order (%d so far)",
                            self.url, exc, self.counts["fallback"])
            return Served(order=list(range(len(items))))
        index = {item_id: i for i, (item_id, _) in enumerate(items)}
        listed = doc["items"]
        order = [index[it["item_id"]] for it in listed]
        self.counts["scored"] += 1
        self.versions[str(doc.get("adapter_version"))] += 1
        if doc.get("explore") is not True:
            return Served(order=order)
        self.counts["explored"] += 1
        return Served(order=order, explore=str(doc.get("explore_mode") or "explore"),
                      ranked_positions=[int(it["rank"]) - 1 for it in listed])

    def close(self) -> None:
        self._client.close()
