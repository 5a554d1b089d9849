"""Catalog texts for `/v1/score` items sent without text, cached so that scoring survives a database outage.

Scoring itself needs no database: the scorer holds the model, and the champion comes from the
reconciler. The one database read on the scoring path is the catalog lookup of items sent without
`text`. `CatalogTexts` answers it from a bounded LRU cache: an entry younger than `ttl_s` is served
without a query; older or unknown ids are read in one query. When the database cannot be read, every
id the cache has (however old) is served from it, and only ids it has never seen fail, with
`DatabaseUnavailable` (503, naming the fix: send `text`). A catalog upsert reaches the scorer within
`ttl_s`.

Hand-written rather than `cachetools.TTLCache`: a TTL cache drops expired entries, and an expired entry
is exactly what must still be served while the database is away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from adapters.product_text import product_text
from storage import events_repo
from storage.db import session_scope
from storage.errors import DatabaseUnavailable, StorageError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def read_catalog_texts(engine: Engine, item_ids: Sequence[str]) -> dict[str, str]:
    """Catalog texts of `item_ids`, built by the same `product_text` as training texts."""
    with session_scope(engine) as s:
        items = events_repo.catalog_items(session=s, item_ids=list(item_ids))
        return {item_id: product_text(item.model_dump()) for item_id, item in items.items()}


class CatalogTexts:
    """`lookup(ids)` -> texts of the ids the catalog knows; thread-safe."""

    def __init__(self, engine: Engine, *, max_items: int = 100_000, ttl_s: float = 60.0,
                 clock: Clock = time.monotonic) -> None:
        self._engine = engine
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (read at, text)
        self.queries = 0  # database reads made (for tests and a debugging eye)

    def lookup(self, item_ids: Sequence[str]) -> dict[str, str]:
        """Texts of `item_ids` (unknown ids left out). Raises DatabaseUnavailable only for ids that must be
        read and are not cached at all while the database cannot be read."""
        now = self._clock()
        fresh, stale = self._cached(item_ids, now)
        wanted = [i for i in item_ids if i not in fresh]
        if not wanted:
            return fresh
        try:
            self.queries += 1
            read = read_catalog_texts(self._engine, wanted)
        except (SQLAlchemyError, StorageError) as exc:
            unknown = [i for i in wanted if i not in stale]
            if unknown:
                raise DatabaseUnavailable(
                    f"the catalog cannot be read ({type(exc).__name__}) and {len(unknown)} item(s) were never "
                    "cached: send their `text` in the request") from exc
            log.warning("catalog read failed (%s); serving %d cached text(s)", type(exc).__name__, len(wanted))
            return fresh | {i: stale[i] for i in wanted}
        self._store(read, now)
        return fresh | read

    def _cached(self, item_ids: Sequence[str], now: float) -> tuple[dict[str, str], dict[str, str]]:
        fresh: dict[str, str] = {}
        stale: dict[str, str] = {}
        with self._lock:
            for i in item_ids:
                entry = self._entries.get(i)
                if entry is None:
                    continue
                self._entries.move_to_end(i)
                (fresh if now - entry[0] < self.ttl_s else stale)[i] = entry[1]
        return fresh, stale

    def _store(self, texts: dict[str, str], now: float) -> None:
        with self._lock:
            for i, text in texts.items():
                self._entries[i] = (now, text)
                self._entries.move_to_end(i)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)
