"""Exploration in the scorer: the perturbations' distributions, the per-process RNG, and the /v1/score route."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from daemon.serving.explore import Explorer, shuffle_top_k, swap_adjacent
from daemon.settings import Settings

DRAWS = 20_000


def test_swap_adjacent_moves_neighbours_of_the_top_k_only() -> None:
    rng = random.Random(1)
    swapped = np.zeros(10)  # how often position p shows the item ranked just below it
    for _ in range(DRAWS):
        shown = swap_adjacent(30, 10, rng)
        assert sorted(shown) == list(range(30))
        assert shown[10:] == list(range(10, 30))  # below the top k nothing moves
        assert all(abs(r - p) <= 1 for p, r in enumerate(shown))  # an item moves at most one place
        for p in range(9):
            swapped[p] += shown[p] == p + 1
    # each pair (p, p+1) is swapped with probability 1/2 (its parity) * 1/2 (the coin)
    assert np.allclose(swapped[:9] / DRAWS, 0.25, atol=0.02), swapped / DRAWS
    assert swap_adjacent(1, 10, rng) == [0]


def test_shuffle_top_k_is_uniform_over_the_top_k() -> None:
    rng = random.Random(2)
    cells = np.zeros((5, 5))
    for _ in range(DRAWS):
        shown = shuffle_top_k(8, 5, rng)
        assert shown[5:] == [5, 6, 7] and sorted(shown[:5]) == list(range(5))
        for p, r in enumerate(shown[:5]):
            cells[p, r] += 1
    assert np.allclose(cells / DRAWS, 0.2, atol=0.02), cells / DRAWS


def test_explorer_rate_and_seed() -> None:
    def draws(rate: float, seed: int) -> list[list[int] | None]:
        ex = Explorer(rate, "shuffle_top_k", 10, random.Random(seed))
        return [ex.perturb(12) for _ in range(4000)]

    off = Explorer(0.0, "swap_adjacent", 10, random.Random(3))
    state = off.rng.getstate()
    assert all(off.perturb(12) is None for _ in range(100)) and off.rng.getstate() == state
    some = draws(0.3, 4)
    assert 0.27 < sum(d is not None for d in some) / len(some) < 0.33
    assert some == draws(0.3, 4) and some != draws(0.3, 5)  # seeded: the same seed, the same decisions
    assert Explorer(1.0, "swap_adjacent", 10, random.Random(0)).perturb(1) is None  # nothing to move


ITEMS = [{"item_id": f"i{k}", "text": t} for k, t in enumerate([
    "Red running shoe, mesh", "Blue wool sweater", "Running socks, 3 pack", "Trail running shoe",
    "Leather office shoe", "Cotton t-shirt"])]


@pytest.fixture
def make_client(api_clients: Callable[..., TestClient]) -> Callable[..., TestClient]:
    return api_clients


def _post(client: TestClient) -> dict[str, Any]:
    r = client.post("/v1/score", json={"query": "running shoes", "items": ITEMS})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_score_explores_on_its_share_of_requests(make_client: Callable[..., TestClient]) -> None:
    plain = _post(make_client())
    assert plain["explore"] is False and plain["explore_mode"] is None
    assert [i["rank"] for i in plain["items"]] == list(range(1, 7))
    by_rank = [i["item_id"] for i in plain["items"]]

    client = make_client(scorer_explore_rate=1.0, scorer_explore_mode="shuffle_top_k", scorer_explore_top_k=4,
                         scorer_explore_seed=7)
    orders: Counter[tuple[int, ...]] = Counter()
    for _ in range(30):
        body = _post(client)
        assert body["explore"] is True and body["explore_mode"] == "shuffle_top_k"
        ranks = [i["rank"] for i in body["items"]]
        assert sorted(ranks[:4]) == [1, 2, 3, 4] and ranks[4:] == [5, 6]  # only the top 4 move
        assert [by_rank[r - 1] for r in ranks] == [i["item_id"] for i in body["items"]]  # rank = model rank
        scores = {i["rank"]: i["score"] for i in body["items"]}
        assert [scores[r] for r in range(1, 7)] == sorted(scores.values(), reverse=True)
        orders[tuple(ranks)] += 1
    assert len(orders) > 5  # shown in many different orders, not the model's only
    metrics = client.get("/metrics").text
    assert 'ranktune_explored_responses_total{mode="shuffle_top_k"} 30.0' in metrics
    assert 'ranktune_explored_responses_total{mode="swap_adjacent"} 0.0' in metrics


def test_explore_settings_are_bounded() -> None:
    from daemon.errors import ConfigError

    s = Settings.load(scorer_explore_rate=0.05, scorer_explore_mode="shuffle_top_k")
    assert (s.scorer.explore_rate, s.scorer.explore_mode, s.scorer.explore_top_k) == (0.05, "shuffle_top_k", 10)
    assert Settings.load().scorer.explore_rate == 0.0  # off unless asked for
    for bad in ({"scorer_explore_rate": 1.5}, {"scorer_explore_mode": "reverse"}, {"scorer_explore_top_k": 1}):
        with pytest.raises(ConfigError):
            Settings.load(**bad)


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_closed_loop_forwards_the_mark_into_valid_events(rate: float, make_client: Callable[..., TestClient]) -> None:
    from daemon.ingest.events import ParseConfig, Parsed, parse_record
    from daemon.ingest.pseudonym import Pseudonymizer
    from daemon.tools.closed_loop import ScorerOrder
    from daemon.tools.simulate import SimConfig, generate

    client = make_client(scorer_explore_rate=rate, scorer_explore_mode="swap_adjacent", scorer_explore_seed=3)
    order = ScorerOrder("http://testserver", client=cast(httpx.Client, client))  # TestClient is an httpx.Client
    cfg = ParseConfig(feedback_topic="fb", catalog_topic="cat", max_message_bytes=65536)
    pages: dict[str, list[dict[str, Any]]] = {}
    for rec in generate(SimConfig(seed=5, n_items=60, n_events=150, page_size=10), order):
        if rec.kind != "feedback":
            continue
        parsed = parse_record("fb", 0, 0, rec.key, rec.value, config=cfg, pseudonymize=Pseudonymizer("k"))
        assert isinstance(parsed, Parsed), parsed  # the marks pass the strict event schema
        pages.setdefault(str(parsed.row["request_id"]), []).append(parsed.row)
    assert order.counts["scored"] == len(pages) > 5 and order.counts["fallback"] == 0
    assert order.counts["explored"] == (len(pages) if rate else 0)
    moved = 0
    for rows in pages.values():
        if not rate:
            assert all(r["explore"] is None and r["ranked_position"] is None for r in rows)
            continue
        shown = {r["position"]: r["ranked_position"] for r in rows if r["action"] == "impression"}
        assert all(r["explore"] is True for r in rows) and sorted(shown) == list(range(len(shown)))
        assert len(set(shown.values())) == len(shown)  # distinct model ranks (of the page's prefix of the order)
        assert all(abs(p - r) <= 1 for p, r in shown.items())  # swap_adjacent moves an item one place at most
        moved += sum(p != r for p, r in shown.items())
    assert moved > 0 or not rate
