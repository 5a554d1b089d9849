"""Static vocabulary of the synthetic shop: categories, brands, attribute values and their synonyms.

Pre-drift words are what shoppers and the production ranker know from the start; the `*_SLANG`
tables and `NEW_BRANDS` appear only after the drift point (see `daemon.tools.shop`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CategorySpec:
    """One product category: its title noun, query words and the attribute values it draws from."""

    noun: str
    synonyms: tuple[str, ...]
    slang: tuple[str, ...]
    materials: tuple[str, ...]
    features: tuple[str, ...]
    sizes: tuple[str, ...]
    related: tuple[str, ...] = ()


SHOE_SIZES = ("38", "39", "40", "41", "42", "43", "44", "45", "46")
APPAREL_SIZES = ("xs", "s", "m", "l", "xl")
WAIST_SIZES = ("w28", "w30", "w32", "w34", "w36")
BAG_SIZES = ("15l", "20l", "25l", "30l")

CATEGORIES: dict[str, CategorySpec] = {
    "sneakers": CategorySpec(
        "Sneaker",
        ("sneakers", "trainers", "running shoes", "sneaker"),
        ("kicks", "sneaks"),
        ("mesh", "leather", "canvas", "suede", "knit"),
        ("breathable", "lightweight", "waterproof", "cushioned", "insulated"),
        SHOE_SIZES,
        ("boots",),
    ),
    "boots": CategorySpec(
        "Boot",
        ("boots", "boot", "hiking boots", "ankle boots"),
        ("stompers", "clompers"),
        ("leather", "suede", "nubuck", "rubber"),
        ("waterproof", "insulated", "lightweight", "lined", "breathable"),
        SHOE_SIZES,
        ("sneakers",),
    ),
    "t-shirts": CategorySpec(
        "T-Shirt",
        ("t-shirt", "tee", "tshirt", "t shirt"),
        ("crewneck", "shortsleeve"),
        ("cotton", "linen", "polyester", "merino"),
        ("breathable", "thermal", "oversized", "slim", "lightweight"),
        APPAREL_SIZES,
        ("hoodies",),
    ),
    "hoodies": CategorySpec(
        "Hoodie",
        ("hoodie", "hoodies", "sweatshirt", "hooded sweatshirt"),
        ("pullover", "hoody"),
        ("cotton", "fleece", "polyester", "merino"),
        ("lined", "oversized", "lightweight", "thermal", "cropped"),
        APPAREL_SIZES,
        ("t-shirts", "jackets"),
    ),
    "jackets": CategorySpec(
        "Jacket",
        ("jacket", "jackets", "coat", "outdoor jacket"),
        ("puffer", "shacket"),
        ("down", "nylon", "fleece", "denim", "leather", "softshell"),
        ("waterproof", "insulated", "windproof", "packable", "lightweight"),
        APPAREL_SIZES,
        ("hoodies",),
    ),
    "dresses": CategorySpec(
        "Dress",
        ("dress", "dresses", "midi dress"),
        ("frock", "sundress"),
        ("cotton", "linen", "silk", "viscose", "satin"),
        ("sleeveless", "lined", "wrap", "pleated", "longsleeve"),
        APPAREL_SIZES,
        ("skirts",),
    ),
    "skirts": CategorySpec(
        "Skirt",
        ("skirt", "skirts", "midi skirt"),
        ("skort", "minis"),
        ("cotton", "denim", "linen", "satin", "wool"),
        ("pleated", "lined", "wrap", "stretch", "thermal"),
        APPAREL_SIZES,
        ("dresses",),
    ),
    "jeans": CategorySpec(
        "Jeans",
        ("jeans", "denim pants", "denims"),
        ("baggies", "dadjeans"),
        ("denim", "cotton", "corduroy"),
        ("stretch", "slim", "relaxed", "lined", "distressed"),
        WAIST_SIZES,
    ),
    "backpacks": CategorySpec(
        "Backpack",
        ("backpack", "backpacks", "rucksack", "bag"),
        ("daypack", "knapsack"),
        ("nylon", "canvas", "leather", "polyester"),
        ("waterproof", "padded", "lightweight", "rolltop", "insulated"),
        BAG_SIZES,
    ),
}

BRANDS: tuple[str, ...] = (
    "Northpeak",
    "Velora",
    "Stridewell",
    "Kestrel",
    "Ashbury",
    "Lumen",
    "Corvid",
    "Halden",
    "Mistral",
    "Oakridge",
    "Sable",
    "Tidewater",
)
NEW_BRANDS: tuple[str, ...] = ("Frostline", "Glacivo", "Nordvik", "Emberly")

LINES: tuple[str, ...] = (
    "Trailrunner",
    "Summit",
    "Metro",
    "Aero",
    "Classic",
    "Voyager",
    "Cascade",
    "Nomad",
    "Pulse",
    "Ridge",
    "Harbor",
    "Everyday",
    "Apex",
    "Strand",
)

COLOURS: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "navy",
    "blue",
    "red",
    "green",
    "beige",
    "brown",
    "pink",
    "olive",
    "burgundy",
)

# Attribute values -> the words shoppers use for them before the drift (first entry is canonical).
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "grey": ("grey", "gray"),
    "navy": ("navy", "navy blue"),
    "burgundy": ("burgundy", "maroon"),
    "beige": ("beige", "sand"),
}
FEATURE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "waterproof": ("waterproof", "water resistant"),
    "insulated": ("insulated", "warm"),
    "breathable": ("breathable", "airy"),
    "lightweight": ("lightweight", "light"),
    "thermal": ("thermal", "warm"),
}
MATERIAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "leather": ("leather", "genuine leather"),
    "merino": ("merino", "merino wool"),
    "down": ("down", "down filled"),
}

# New vocabulary that shoppers use only after the drift point.
COLOUR_SLANG: dict[str, tuple[str, ...]] = {
    "black": ("onyx", "blackout"),
    "white": ("cloud", "chalk"),
    "beige": ("oatmeal",),
    "green": ("sage",),
    "grey": ("graphite",),
}
FEATURE_SLANG: dict[str, tuple[str, ...]] = {
    "insulated": ("toasty", "cozy"),
    "waterproof": ("stormproof",),
    "thermal": ("toasty",),
    "lined": ("cozy",),
}

# The season a feature implies; everything else is "all-season".
WINTER_FEATURES = frozenset({"insulated", "waterproof", "thermal", "lined", "windproof"})
SUMMER_FEATURES = frozenset({"breathable", "lightweight", "sleeveless"})
SEASON_WORDS: dict[str, tuple[str, ...]] = {
    "summer": ("summer", "for summer"),
    "winter": ("winter", "for winter", "cold weather", "snow"),
}


def post_vocabulary() -> frozenset[str]:
    """Every word that only post-drift queries use (category/colour/feature slang, winter, new brands)."""
    words: set[str] = set()
    for spec in CATEGORIES.values():
        words.update(spec.slang)
    for table in (COLOUR_SLANG, FEATURE_SLANG):
        for values in table.values():
            words.update(values)
    for phrase in SEASON_WORDS["winter"]:
        words.update(w for w in phrase.split() if w != "for")
    words.update(b.lower() for b in NEW_BRANDS)
    return frozenset(words)


POST_VOCABULARY: frozenset[str] = post_vocabulary()
