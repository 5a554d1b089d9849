"""Product domains of the shop family (`daemon.tools.shops`): categories, brands, attributes, synonyms.

`fashion` is built from the demo shop's own vocabulary (`daemon.tools.shop_vocab`); `electronics` and
`home` (home & garden) are independent, with their own words, attribute names and relatedness.
`CategorySpec.materials` / `features` / `sizes` hold each domain's three attribute slots; `Domain.attr_names`
says what the slots are called in product texts (electronics calls its "material" slot "connectivity").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.tools import shop_vocab as fv
from daemon.tools.shop_vocab import CategorySpec

__all__ = ["DOMAINS", "Domain"]


@dataclass(frozen=True)
class Domain:
    """Everything a shop of one product domain needs to build items, intents and queries."""

    name: str
    categories: dict[str, CategorySpec]
    brands: tuple[str, ...]
    lines: tuple[str, ...]
    colours: tuple[str, ...]
    colour_synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    material_synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    feature_synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attr_names: dict[str, str] = field(default_factory=lambda: {"material": "material", "feature": "feature",
                                                                 "size": "size"})


_FASHION = Domain(
    name="fashion",
    categories=dict(fv.CATEGORIES),
    brands=fv.BRANDS,
    lines=fv.LINES,
    colours=fv.COLOURS,
    colour_synonyms=dict(fv.COLOUR_SYNONYMS),
    material_synonyms=dict(fv.MATERIAL_SYNONYMS),
    feature_synonyms=dict(fv.FEATURE_SYNONYMS),
)

_GB = ("64gb", "128gb", "256gb", "512gb")
_INCH = ("13 inch", "14 inch", "15 inch", "16 inch")
_ELECTRONICS = Domain(
    name="electronics",
    categories={
        "laptops": CategorySpec("Laptop", ("laptop", "notebook", "laptops", "ultrabook"), (),
                                ("wifi 6", "thunderbolt", "usb-c", "lte"),
                                ("gaming", "lightweight", "touchscreen", "business", "convertible"), _INCH,
                                ("tablets", "monitors")),
        "tablets": CategorySpec("Tablet", ("tablet", "tablets", "pad", "e-reader"), (),
                                ("wifi", "lte", "usb-c"), ("lightweight", "stylus", "kids", "rugged"),
                                _GB, ("laptops", "phones")),
        "phones": CategorySpec("Smartphone", ("phone", "smartphone", "mobile", "cell phone"), (),
                               ("5g", "dual sim", "usb-c", "nfc"), ("rugged", "compact", "camera", "long battery"),
                               _GB, ("tablets", "chargers")),
        "headphones": CategorySpec("Headphones", ("headphones", "headset", "earbuds", "earphones"), (),
                                   ("bluetooth", "wired", "usb-c"),
                                   ("noise cancelling", "sport", "gaming", "open back", "foldable"),
                                   ("in-ear", "on-ear", "over-ear"), ("speakers",)),
        "speakers": CategorySpec("Speaker", ("speaker", "speakers", "soundbar", "boombox"), (),
                                 ("bluetooth", "wifi", "wired"), ("waterproof", "portable", "smart", "party"),
                                 ("mini", "compact", "large"), ("headphones",)),
        "monitors": CategorySpec("Monitor", ("monitor", "display", "screen", "monitors"), (),
                                 ("hdmi", "displayport", "usb-c"), ("4k", "curved", "gaming", "ultrawide", "ips"),
                                 ("24 inch", "27 inch", "32 inch", "34 inch"), ("laptops",)),
        "keyboards": CategorySpec("Keyboard", ("keyboard", "keyboards", "keypad"), (),
                                  ("bluetooth", "wired", "wireless"), ("mechanical", "backlit", "ergonomic", "silent"),
                                  ("full size", "tenkeyless", "compact"), ("mice",)),
        "mice": CategorySpec("Mouse", ("mouse", "mice", "trackball"), (),
                             ("bluetooth", "wired", "wireless"), ("gaming", "ergonomic", "silent", "vertical"),
                             ("small", "medium", "large"), ("keyboards",)),
        "chargers": CategorySpec("Charger", ("charger", "power adapter", "charging brick", "power bank"), (),
                                 ("usb-c", "wireless", "magsafe", "lightning"), ("fast", "compact", "travel", "gan"),
                                 ("20w", "45w", "65w", "100w"), ("phones",)),
        "cameras": CategorySpec("Camera", ("camera", "cameras", "action cam", "webcam"), (),
                                ("wifi", "usb-c", "hdmi"), ("4k", "waterproof", "mirrorless", "compact", "stabilized"),
                                ("body only", "kit lens", "bundle"), ()),
    },
    brands=("Voltix", "Quanta", "Nexon", "Aurion", "Pixelon", "Strato", "Corewave", "Helix", "Lumo", "Zentro"),
    lines=("Pro", "Air", "Max", "Lite", "Ultra", "One", "Edge", "Neo", "Prime", "Go"),
    colours=("black", "silver", "white", "space grey", "blue", "red", "green", "gold"),
    colour_synonyms={"black": ("black", "matte black", "jet"), "silver": ("silver", "aluminium", "metallic"),
                     "white": ("white", "pearl"), "space grey": ("space grey", "graphite", "dark grey"),
                     "blue": ("blue", "navy"), "red": ("red", "crimson"), "green": ("green", "mint"),
                     "gold": ("gold", "champagne")},
    material_synonyms={"bluetooth": ("bluetooth", "bt"), "wireless": ("wireless", "cordless", "2.4ghz"),
                       "usb-c": ("usb-c", "type-c", "usbc"), "wifi": ("wifi", "wi-fi", "wlan")},
    feature_synonyms={"noise cancelling": ("noise cancelling", "anc", "noise canceling"),
                      "gaming": ("gaming", "gamer", "esports"), "lightweight": ("lightweight", "light", "thin"),
                      "waterproof": ("waterproof", "water resistant", "ip67"), "4k": ("4k", "uhd", "2160p"),
                      "ergonomic": ("ergonomic", "comfort", "wrist friendly"), "fast": ("fast", "quick charge"),
                      "portable": ("portable", "travel size")},
    attr_names={"material": "connectivity", "feature": "feature", "size": "size"},
)

_HOME = Domain(
    name="home",
    categories={
        "sofas": CategorySpec("Sofa", ("sofa", "couch", "settee", "loveseat"), (),
                              ("velvet", "linen", "leather", "boucle"), ("sleeper", "modular", "reclining", "corner"),
                              ("2 seater", "3 seater", "4 seater"), ("armchairs",)),
        "armchairs": CategorySpec("Armchair", ("armchair", "accent chair", "lounge chair", "recliner"), (),
                                  ("velvet", "linen", "leather", "rattan"),
                                  ("swivel", "reclining", "wingback", "rocking"),
                                  ("standard", "oversized"), ("sofas",)),
        "lamps": CategorySpec("Lamp", ("lamp", "light", "floor lamp", "table lamp"), (),
                              ("brass", "ceramic", "glass", "rattan", "metal"), ("dimmable", "smart", "led", "arc"),
                              ("small", "medium", "tall"), ()),
        "rugs": CategorySpec("Rug", ("rug", "carpet", "runner", "area rug"), (),
                             ("wool", "jute", "cotton", "polypropylene"),
                             ("washable", "shaggy", "flatweave", "outdoor"),
                             ("60x90", "120x170", "160x230", "200x300"), ()),
        "planters": CategorySpec("Planter", ("planter", "plant pot", "flower pot", "pot"), (),
                                 ("terracotta", "ceramic", "concrete", "plastic"),
                                 ("self watering", "hanging", "drainage hole", "outdoor"),
                                 ("small", "medium", "large"), ("raised beds",)),
        "raised beds": CategorySpec("Raised Bed", ("raised bed", "garden bed", "planter box"), (),
                                    ("cedar", "galvanized steel", "pine", "composite"),
                                    ("elevated", "modular", "covered"),
                                    ("2x4 ft", "4x4 ft", "4x8 ft"), ("planters",)),
        "hoses": CategorySpec("Garden Hose", ("garden hose", "hose", "water hose", "hosepipe"), (),
                              ("rubber", "vinyl", "hybrid polymer"),
                              ("expandable", "kink free", "heavy duty", "soaker"),
                              ("15m", "25m", "30m", "50m"), ("sprinklers",)),
        "sprinklers": CategorySpec("Sprinkler", ("sprinkler", "lawn sprinkler", "irrigation"), (),
                                   ("metal", "plastic"), ("oscillating", "rotating", "timer", "impact"),
                                   ("small lawn", "medium lawn", "large lawn"), ("hoses",)),
        "mowers": CategorySpec("Lawn Mower", ("lawn mower", "mower", "lawnmower", "grass cutter"), (),
                               ("cordless", "petrol", "electric"), ("self propelled", "mulching", "robotic", "push"),
                               ("32cm", "37cm", "42cm", "46cm"), ()),
        "cookware": CategorySpec("Pan", ("frying pan", "skillet", "pan", "saute pan"), (),
                                 ("cast iron", "stainless steel", "copper", "aluminium"),
                                 ("non-stick", "induction", "oven safe", "ceramic coated"),
                                 ("20cm", "24cm", "28cm", "32cm"), ("pots",)),
        "pots": CategorySpec("Stock Pot", ("pot", "stock pot", "saucepan", "casserole"), (),
                             ("cast iron", "stainless steel", "enamel", "aluminium"),
                             ("non-stick", "induction", "oven safe", "with lid"),
                             ("2l", "4l", "6l", "8l"), ("cookware",)),
        "bedding": CategorySpec("Duvet Cover", ("duvet cover", "bedding", "bed linen", "sheet set"), (),
                                ("cotton", "linen", "bamboo", "flannel"), ("percale", "sateen", "cooling", "organic"),
                                ("single", "double", "king", "super king"), ()),
    },
    brands=("Hearthly", "Greenway", "Oakhaven", "Brightnest", "Willowmere", "Terrabloom", "Casaluma", "Fernhill",
            "Stonecraft", "Larkspur"),
    lines=("Home", "Garden", "Essentials", "Signature", "Studio", "Heritage", "Nordic", "Urban", "Cottage"),
    colours=("white", "black", "grey", "beige", "green", "blue", "terracotta", "natural", "charcoal", "sage"),
    colour_synonyms={"grey": ("grey", "gray"), "beige": ("beige", "cream", "oatmeal"), "natural": ("natural", "raw"),
                     "charcoal": ("charcoal", "anthracite"), "green": ("green", "olive"),
                     "sage": ("sage", "pale green"),
                     "terracotta": ("terracotta", "rust")},
    material_synonyms={"stainless steel": ("stainless steel", "steel", "inox"),
                       "cordless": ("cordless", "battery", "battery powered"), "wool": ("wool", "woollen")},
    feature_synonyms={"non-stick": ("non-stick", "nonstick", "non stick"), "dimmable": ("dimmable", "adjustable light"),
                      "washable": ("washable", "machine washable"), "self propelled": ("self propelled", "self-drive"),
                      "expandable": ("expandable", "stretch", "expanding"), "reclining": ("reclining", "recliner")},
    attr_names={"material": "material", "feature": "feature", "size": "size"},
)

DOMAINS: dict[str, Domain] = {d.name: d for d in (_FASHION, _ELECTRONICS, _HOME)}
