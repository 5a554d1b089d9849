"""The one function that turns catalog data into the product text the model sees.

Training (catalog rows), evaluation (simulator judgements), drift checks and serving (API requests
that name only an item id) all call it, so a model is never scored on text shaped unlike its
training text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def product_text(payload: Mapping[str, Any]) -> str:
    """Title, then `brand:`, `category:` and every attribute as `key: value` (sorted), joined by " | ".

    `payload` is a catalog upsert (or a catalog row as a mapping). Missing optional fields are left
    out; the description is left out too, since it is long and cross-encoder inputs are truncated.
    """
    parts = [str(payload.get("title") or "").strip()]
    for key in ("brand", "category"):
        if payload.get(key):
            parts.append(f"{key}: {payload[key]}")
    attributes = payload.get("attributes") or {}
    if isinstance(attributes, Mapping):
        parts.extend(f"{k}: {attributes[k]}" for k in sorted(attributes) if attributes[k] not in (None, ""))
    return " | ".join(p for p in parts if p)
