"""The shop family's specifications (`daemon.tools.shops`): click models, shops, and the family itself."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from daemon.tools.shop_domains import DOMAINS

__all__ = ["FAMILY", "ClickModel", "Policy", "Rule", "ShopSpec", "family_spec", "family_specs", "with_policy"]

Policy = Literal["random", "lexical", "closed"]
Rule = Literal["attributes", "brand_pref", "strict"]


@dataclass(frozen=True)
class ClickModel:
    """P(click at k) = exam(k) * (click_given_grade[g] + trust * (1 - click_given_grade[g])) + noise.

    exam(k) = 1 / (k + 1) ** eta. After a purchase the shopper stops (`stop_after_purchase`), which makes
    deep positions look even less examined than `exam` says.
    """

    eta: float = 1.0
    click_given_grade: tuple[float, float, float, float] = (0.04, 0.2, 0.5, 0.85)
    noise: float = 0.01
    trust: float = 0.0
    stop_after_purchase: bool = False

    def examine(self, position: int) -> float:
        return float((position + 1) ** -self.eta)

    def curve(self, n: int) -> list[float]:
        return [self.examine(k) for k in range(n)]

    def p_click(self, position: int, grade: int) -> float:
        c = self.click_given_grade[grade]
        return min(1.0, self.examine(position) * (c + self.trust * (1.0 - c)) + self.noise)


@dataclass(frozen=True)
class ShopSpec:
    """One shop of the family. `rule` decides ground truth (see `FamilyShop.relevance`)."""

    name: str
    domain: str = "fashion"
    n_items: int = 300
    rule: Rule = "attributes"
    clicks: ClickModel = field(default_factory=ClickModel)
    policy: Policy = "lexical"
    page_size: int = 10
    retrieve: int = 10  # lexical candidates a page is built from (>= page_size)
    lexical_noise: float = 0.9
    typo_rate: float = 0.1
    explore_rate: float = 0.0  # share of pages shuffled (and marked) on purpose
    drift_categories: float = 0.0  # post-drift: this share of categories changes taste (see relevance)

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"unknown domain {self.domain!r}; known: {sorted(DOMAINS)}")
        if not 2 <= self.page_size <= self.retrieve <= self.n_items:
            raise ValueError("need 2 <= page_size <= retrieve <= n_items")
        if not 0.0 <= self.explore_rate <= 1.0:
            raise ValueError("explore_rate must be within [0, 1]")


FAMILY: tuple[ShopSpec, ...] = (
    ShopSpec("fashion-lexical", "fashion", 300, "attributes", ClickModel(eta=0.7), "lexical", 10, 10),
    ShopSpec("electronics-random", "electronics", 400, "brand_pref", ClickModel(eta=1.0, noise=0.02), "random", 10, 10),
    ShopSpec("home-lexical-trust", "home", 500, "strict", ClickModel(eta=1.2, trust=0.1), "lexical", 12, 12),
    ShopSpec("electronics-closed", "electronics", 400, "attributes", ClickModel(eta=1.0), "closed", 10, 16),
    ShopSpec("fashion-brand-closed", "fashion", 300, "brand_pref", ClickModel(eta=0.5, noise=0.02), "closed", 10, 16),
    ShopSpec("home-random-noisy", "home", 400, "brand_pref",
             ClickModel(eta=0.8, noise=0.03, trust=0.05, stop_after_purchase=True), "random", 10, 10),
)


def family_spec(name: str) -> ShopSpec:
    for s in FAMILY:
        if s.name == name:
            return s
    raise KeyError(f"no shop {name!r} in the family; known: {[s.name for s in FAMILY]}")


def family_specs(names: str) -> list[ShopSpec]:
    """The shops a `--shops` option names: `all`, or names separated by commas."""
    return list(FAMILY) if names == "all" else [family_spec(s.strip()) for s in names.split(",") if s.strip()]


def with_policy(spec: ShopSpec, **changes: Any) -> ShopSpec:
    """A copy of `spec` with fields changed (e.g. `policy="closed"`, `clicks=ClickModel(eta=1.0)`)."""
    return replace(spec, **changes)
