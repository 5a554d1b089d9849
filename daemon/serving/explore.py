"""Exploration: on a small share of /v1/score requests, show the model's ranking in a randomly perturbed order.

Clicks depend on the position an item is shown at as much as on the item. To measure how much (the
examination propensity of each position, `adapters.propensity.estimate_randomized`), the scorer moves
items around on purpose, at random, and says so: an explored response carries `explore: true`, the mode,
and each item's model `rank`; the shop's front end copies the mark and the rank (`ranked_position`) into
the feedback events of that page. Two modes, both only ever moving the model's top `top_k`:

* `swap_adjacent` (RandPair-style, Joachims et al. 2017, over all neighbours): pick a random parity, then
  swap each pair (p, p+1) of that parity independently with probability 1/2. Each item moves at most one
  place, so the page stays close to the model's order; every neighbouring pair of positions gets swapped
  in some responses, which links the whole curve.
* `shuffle_top_k`: a uniform random permutation of the top k (Wang et al. 2016): strongest signal,
  largest cost to the shopper.

One `Explorer` per process (the route builds it once), with its own seeded RNG (`scorer.explore_seed`,
fresh entropy when unset). The route calls it on the event loop's one thread, so the RNG needs no lock.
Functions here are pure: they return orders, they never touch the response.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from daemon.settings import ExploreMode, ScorerSettings

__all__ = ["Explorer", "Perturb", "shuffle_top_k", "swap_adjacent"]

Perturb = Callable[[int, int, random.Random], list[int]]
"""`(n items, top k, rng) -> shown`: `shown[p]` is the model rank (0-based) of the item shown at position p."""


def swap_adjacent(n: int, k: int, rng: random.Random) -> list[int]:
    """Swap adjacent pairs of one random parity within the top `k`, each with probability 1/2."""
    shown = list(range(n))
    m = min(n, k)
    for p in range(rng.randrange(2), m - 1, 2):
        if rng.random() < 0.5:
            shown[p], shown[p + 1] = shown[p + 1], shown[p]
    return shown


def shuffle_top_k(n: int, k: int, rng: random.Random) -> list[int]:
    """A uniform random permutation of the top `k`; the rest keep their places."""
    m = min(n, k)
    head = list(range(m))
    rng.shuffle(head)
    return head + list(range(m, n))


MODES: dict[str, Perturb] = {"swap_adjacent": swap_adjacent, "shuffle_top_k": shuffle_top_k}


@dataclass
class Explorer:
    """Decides per request whether to explore, and how (`rate` 0: never)."""

    rate: float
    mode: ExploreMode
    top_k: int
    rng: random.Random

    @classmethod
    def from_settings(cls, scorer: ScorerSettings) -> Explorer:
        return cls(scorer.explore_rate, scorer.explore_mode, scorer.explore_top_k, random.Random(scorer.explore_seed))

    def perturb(self, n: int) -> list[int] | None:
        """The shown order for a response of `n` ranked items, or None to show the model's order.

        Draws nothing when exploration is off or the page has fewer than two items, so a rate of 0 costs
        no randomness and never changes a response.
        """
        if self.rate <= 0.0 or n < 2 or self.rng.random() >= self.rate:
            return None
        return MODES[self.mode](n, self.top_k, self.rng)
