"""The synthetic shop behind `ranktune simulate`: catalog, query intents, hidden relevance, drift.

Everything is a pure function of the seed. Two phases exist: `"pre"` (before the drift point) and
`"post"` (after it). At the drift point new brands launch (their items are published as catalog
upserts then), winter items become what shoppers prefer (a hidden preference that raises their
relevance and demotes non-winter exact matches), and shoppers start using new words (slang synonyms,
"winter", new brand names) that never occur before.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.product_text import product_text
from daemon.tools.shop_vocab import (
    BRANDS,
    CATEGORIES,
    COLOUR_SLANG,
    COLOUR_SYNONYMS,
    COLOURS,
    FEATURE_SLANG,
    FEATURE_SYNONYMS,
    LINES,
    MATERIAL_SYNONYMS,
    NEW_BRANDS,
    POST_VOCABULARY,
    SEASON_WORDS,
    SUMMER_FEATURES,
    WINTER_FEATURES,
)

Phase = Literal["pre", "post"]
PHASES: tuple[Phase, ...] = ("pre", "post")
PREFERRED_SEASON = "winter"  # the seasonal preference that switches on at the drift point
INTENT_KEYS: tuple[str, ...] = ("colour", "material", "feature", "brand", "size")
_INTENT_KEY_WEIGHTS = (0.35, 0.2, 0.2, 0.15, 0.1)
TYPO_RATE = 0.12  # share of queries with one character-level typo
SLANG_RATE = 0.5  # post-drift share of words rendered with new slang where slang exists

__all__ = [
    "PHASES",
    "POST_VOCABULARY",
    "Intent",
    "Item",
    "Phase",
    "Shop",
    "product_text",
    "relevance",
    "render_query",
]


@dataclass(frozen=True, slots=True)
class Item:
    """One product. `launch` is the phase it is published in ("post" = a new-brand item)."""

    item_id: str
    title: str
    brand: str
    category: str
    attributes: Mapping[str, str]
    description: str
    launch: Phase = "pre"

    def value(self, key: str) -> str | None:
        """The item's value for an intent key (`brand` or an attribute name)."""
        return self.brand.lower() if key == "brand" else self.attributes.get(key)

    def payload(self, ts: str | None = None) -> dict[str, Any]:
        """The catalog-upsert event for this item (with `ts` when given)."""
        out: dict[str, Any] = {
            "item_id": self.item_id,
            "title": self.title,
            "description": self.description,
            "category": self.category,
            "brand": self.brand,
            "attributes": dict(self.attributes),
        }
        if ts is not None:
            out["ts"] = ts
        return out


@dataclass(frozen=True, slots=True)
class Intent:
    """What a shopper wants: a category plus attribute constraints (`brand`, `colour`, ..., `season`)."""

    category: str
    attrs: tuple[tuple[str, str], ...] = field(default=())

    @property
    def constraints(self) -> dict[str, str]:
        """The attribute constraints as a dict."""
        return dict(self.attrs)


def relevance(intent: Intent, item: Item, phase: Phase) -> int:
    """The hidden ground-truth grade (0..3) of `item` for `intent` in `phase`.

    Same category: 3 when every constraint matches, 2 when at least half do, else 1. A related
    category (sneakers/boots, dresses/skirts, ...) that matches at least one constraint: 1. Else 0.
    After the drift, shoppers prefer winter items: a same-category winter item gains one grade
    (at most 3) and a non-winter exact match drops to 2.
    """
    wanted = intent.attrs
    matched = sum(1 for key, value in wanted if item.value(key) == value)
    if item.category != intent.category:
        related = item.category in CATEGORIES[intent.category].related
        return 1 if related and matched > 0 else 0
    if matched == len(wanted):
        grade = 3
    elif 2 * matched >= len(wanted):
        grade = 2
    else:
        grade = 1
    if phase == "post":
        if item.attributes.get("season") == PREFERRED_SEASON:
            grade = min(3, grade + 1)
        elif grade == 3:
            grade = 2
    return grade


def _pick(rng: random.Random, words: Sequence[str], slang: Sequence[str], phase: Phase) -> str:
    if phase == "post" and slang and rng.random() < SLANG_RATE:
        return rng.choice(list(slang))
    return rng.choice(list(words))


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:  # drop one
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double one


def render_query(intent: Intent, rng: random.Random, phase: Phase) -> str:
    """Turn an intent into query text: synonyms, varied word order, occasional typos.

    Post-drift, about half the words that have slang use it (new category/colour/feature words),
    and the season is written with words ("winter", "cold weather", ...) never used before.
    """
    spec = CATEGORIES[intent.category]
    c = intent.constraints
    adjectives: list[str] = []
    if "colour" in c:
        adjectives.append(
            _pick(rng, COLOUR_SYNONYMS.get(c["colour"], (c["colour"],)), COLOUR_SLANG.get(c["colour"], ()), phase)
        )
    if "material" in c:
        adjectives.append(rng.choice(MATERIAL_SYNONYMS.get(c["material"], (c["material"],))))
    if "feature" in c:
        adjectives.append(
            _pick(rng, FEATURE_SYNONYMS.get(c["feature"], (c["feature"],)), FEATURE_SLANG.get(c["feature"], ()), phase)
        )
    if len(adjectives) > 1 and rng.random() < 0.3:
        rng.shuffle(adjectives)
    noun = _pick(rng, spec.synonyms, spec.slang, phase)
    words = [*adjectives, noun] if rng.random() < 0.85 else [noun, *adjectives]
    if "brand" in c:
        words.insert(0, c["brand"])
    if "season" in c:
        season = rng.choice(SEASON_WORDS[c["season"]])
        if season.startswith("for "):
            words.append(season)
        else:
            words.insert(1 if "brand" in c else 0, season)
    if "size" in c:
        words.append(f"size {c['size']}" if rng.random() < 0.7 else c["size"])
    tokens = " ".join(words).split()
    if rng.random() < TYPO_RATE:
        long_ones = [i for i, t in enumerate(tokens) if len(t) >= 4]
        if long_ones:
            i = rng.choice(long_ones)
            tokens[i] = _typo(tokens[i], rng)
    return " ".join(tokens)


def _season(feature: str) -> str:
    if feature in WINTER_FEATURES:
        return "winter"
    return "summer" if feature in SUMMER_FEATURES else "all-season"


@dataclass(frozen=True)
class Shop:
    """A deterministic catalog: `items` holds both phases; `catalog(phase)` what is on sale then."""

    seed: int
    items: tuple[Item, ...]

    @classmethod
    def build(cls, seed: int, n_items: int, n_new: int | None = None) -> Shop:
        """Build the shop for `seed`: `n_items` launch items plus `n_new` (default n_items/5, >= 8)
        new-brand items that launch at the drift point, mostly winter products."""
        if n_items < 1:
            raise ValueError("n_items must be at least 1")
        rng = random.Random(seed * 1_000_003 + 17)
        n_new = max(8, n_items // 5) if n_new is None else n_new
        ids: set[str] = set()
        items: list[Item] = []
        names = sorted(CATEGORIES)
        for i in range(n_items + n_new):
            launch: Phase = "pre" if i < n_items else "post"
            category = names[i % len(names)] if i < len(names) else rng.choice(names)
            spec = CATEGORIES[category]
            brand = rng.choice(BRANDS if launch == "pre" else NEW_BRANDS)
            winter = [f for f in spec.features if f in WINTER_FEATURES]
            if launch == "post" and winter and rng.random() < 0.8:
                feature = rng.choice(winter)
            else:
                feature = rng.choice(spec.features)
            colour, material = rng.choice(COLOURS), rng.choice(spec.materials)
            attributes = {
                "colour": colour,
                "material": material,
                "feature": feature,
                "size": rng.choice(spec.sizes),
                "season": _season(feature),
            }
            line = rng.choice(LINES)
            title = f"{brand} {line} {feature.title()} {material.title()} {spec.noun} - {colour.title()}"
            description = (
                f"{feature.capitalize()} {material} {spec.noun.lower()} from {brand}'s {line} line, "
                f"in {colour}. Size {attributes['size'].upper()}."
            )
            item_id = f"sku-{rng.getrandbits(40):010x}"
            while item_id in ids:
                item_id = f"sku-{rng.getrandbits(40):010x}"
            ids.add(item_id)
            items.append(Item(item_id, title, brand, category, attributes, description, launch))
        return cls(seed=seed, items=tuple(items))

    def catalog(self, phase: Phase) -> list[Item]:
        """Items on sale in `phase` (pre: launch items; post: all)."""
        return [it for it in self.items if phase == "post" or it.launch == "pre"]

    @property
    def new_items(self) -> list[Item]:
        """Items that launch at the drift point (new brands)."""
        return [it for it in self.items if it.launch == "post"]

    def sample_intent(self, rng: random.Random, phase: Phase) -> Intent:
        """Draw an intent from a target product, so at least one item satisfies it.

        Post-drift, intents lean towards new brands (always naming the brand) and winter products.
        """
        pool = self.catalog(phase)
        force_brand = False
        if phase == "post":
            r = rng.random()
            if r < 0.3 and self.new_items:
                pool, force_brand = self.new_items, True
            elif r < 0.7:
                pool = [it for it in pool if it.attributes.get("season") == PREFERRED_SEASON] or pool
        target = rng.choice(pool)
        n = rng.choices((1, 2, 3), weights=(0.45, 0.4, 0.15))[0]
        keys: list[str] = ["brand"] if force_brand else []
        while len(keys) < n:
            key = rng.choices(INTENT_KEYS, weights=_INTENT_KEY_WEIGHTS)[0]
            if key not in keys:
                keys.append(key)
        attrs = [(k, v) for k in keys if (v := target.value(k)) is not None]
        season = target.attributes.get("season")
        if phase == "post" and season == "winter" and rng.random() < 0.3:
            attrs.append(("season", "winter"))
        elif phase == "pre" and season == "summer" and rng.random() < 0.08:
            attrs.append(("season", "summer"))
        return Intent(target.category, tuple(attrs))
