"""Traffic generation for `ranktune simulate`: search pages, a position-biased click model, outputs.

`generate(cfg)` yields the catalog upserts, then search requests: an intent is drawn, rendered as a
query, a noisy lexical *production ranker* builds a page, and a click model driven by the hidden
relevance (`daemon.tools.shop.relevance`) produces impression/click/add_to_cart/purchase events.
Everything is deterministic for `cfg.seed`; wall-clock pacing (`events_per_s`) lives in the sinks
(`daemon.tools.sim_output`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from daemon.tools.shop import PHASES, Intent, Item, Phase, Shop, product_text, relevance, render_query
from daemon.tools.shop_vocab import CATEGORIES, COLOUR_SYNONYMS, FEATURE_SYNONYMS, MATERIAL_SYNONYMS
from daemon.tools.sim_malformed import malformed_value

__all__ = [
    "ACTIONS",
    "LexicalRanker",
    "SimConfig",
    "SimRecord",
    "eval_judgements",
    "examine_probability",
    "generate",
]

ACTIONS: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase")
RecordKind = Literal["catalog", "feedback", "malformed"]
Stream = Literal["catalog", "feedback"]

# Click model: P(click) = P(examine position k) * P(click | grade) + noise.
EXAMINE_POWER = 0.7
CLICK_GIVEN_GRADE = (0.04, 0.2, 0.5, 0.85)
NOISE_CLICK = 0.01
CART_GIVEN_CLICK = (0.02, 0.1, 0.3, 0.5)
PURCHASE_GIVEN_CART = (0.1, 0.25, 0.45, 0.65)
ITEM_TEXT_RATE = 0.1  # share of feedback events that carry `item_text`
NEW_SESSION_RATE = 0.35


def examine_probability(position: int) -> float:
    """P(the shopper looks at the result at 0-based `position`) = 1 / (position + 1) ** 0.7."""
    return float(1.0 / (position + 1) ** EXAMINE_POWER)


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. `n_events` counts feedback events; catalog and malformed records come on top.

    `drift_at` is the fraction of feedback events after which the post-drift phase begins (None: never).
    """

    seed: int = 7
    n_items: int = 300
    n_events: int = 5000
    events_per_s: float | None = None
    drift_at: float | None = None
    malformed_rate: float = 0.0
    page_size: int = 10
    start_ts: datetime = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    def __post_init__(self) -> None:
        if self.n_items < 10:
            raise ValueError("n_items must be at least 10")
        if self.n_events < 0:
            raise ValueError("n_events must be >= 0")
        if self.events_per_s is not None and self.events_per_s <= 0:
            raise ValueError("events_per_s must be > 0 (or None for as fast as possible)")
        if self.drift_at is not None and not 0.0 <= self.drift_at <= 1.0:
            raise ValueError("drift_at must be within [0, 1]")
        if not 0.0 <= self.malformed_rate <= 1.0:
            raise ValueError("malformed_rate must be within [0, 1]")
        if not 1 <= self.page_size <= min(50, self.n_items):
            raise ValueError("page_size must be within [1, min(50, n_items)]")
        if self.start_ts.tzinfo is None:
            raise ValueError("start_ts must carry a time zone")


@dataclass(frozen=True, slots=True)
class SimRecord:
    """One record to publish. `stream` names the topic (catalog or feedback); `grade` is the hidden
    relevance of a feedback event's item; `defect` says how a malformed record is broken."""

    kind: RecordKind
    stream: Stream
    key: bytes | None
    value: bytes
    payload: dict[str, Any] | None
    phase: Phase
    grade: int | None = None
    defect: str | None = None


_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    out = []
    for t in _TOKEN.findall(text.lower()):
        out.append(t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t)
    return out


class LexicalRanker:
    """The shop's production ranker: weighted token overlap plus popularity plus noise.

    It knows the pre-drift synonyms only, not slang or typos, so its pages are imperfect and get
    worse after the drift; clicks on them still carry the hidden relevance signal.
    """

    def __init__(self, shop: Shop, rng: np.random.Generator, noise: float = 0.9) -> None:
        self.shop, self.rng, self.noise = shop, rng, noise
        vocab: dict[str, int] = {}
        rows = [
            sorted({vocab.setdefault(t, len(vocab)) for t in _tokens(product_text(it.payload()))}) for it in shop.items
        ]
        matrix = np.zeros((len(rows), len(vocab)), dtype=np.float32)
        for i, cols in enumerate(rows):
            matrix[i, cols] = 1.0
        for name, spec in CATEGORIES.items():
            for t in _tokens(f"{name} {spec.noun}"):
                if t in vocab:
                    matrix[:, vocab[t]] *= 2.0
        self.vocab, self.matrix = vocab, matrix
        self.popularity = (0.3 * rng.standard_normal(len(rows))).astype(np.float32)
        self.unlaunched = np.array([it.launch == "post" for it in shop.items])
        pairs: dict[str, str] = {}
        for name, spec in CATEGORIES.items():
            pairs.update({syn: name for syn in spec.synonyms})
        for table in (COLOUR_SYNONYMS, FEATURE_SYNONYMS, MATERIAL_SYNONYMS):
            for canon, syns in table.items():
                pairs.update({syn: canon for syn in syns[1:]})
        self.synonyms = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def rank(self, query: str, phase: Phase, k: int) -> list[int]:
        """Indices into `shop.items` of the top `k` results for `query` in `phase`."""
        text = f" {query.lower()} "
        for phrase, canon in self.synonyms:
            if f" {phrase} " in text:
                text = text.replace(f" {phrase} ", f" {canon} ")
        cols = sorted({self.vocab[t] for t in _tokens(text) if t in self.vocab})
        scores = self.matrix[:, cols].sum(axis=1) + self.popularity
        scores = scores + self.noise * self.rng.standard_normal(len(scores)).astype(np.float32)
        if phase == "pre":
            scores[self.unlaunched] = -np.inf
        top = np.argpartition(-scores, k - 1)[:k]
        return [int(i) for i in top[np.argsort(-scores[top], kind="stable")]]


def _ts(start: datetime, micros: int) -> str:
    return (start + timedelta(microseconds=micros)).isoformat(timespec="microseconds")


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Served:
    """How the live model ordered a closed-loop page: `order` indexes the candidates, best first. When the
    scorer explored (shuffled its top results on purpose), `explore` names how and `ranked_positions[p]` is
    the rank the model gave the item shown at position p; the events carry both."""

    order: list[int]
    explore: str | None = None
    ranked_positions: list[int] | None = None


PageOrder = Callable[[str, list[tuple[str, str]]], Served]
"""Closed loop: `(query, [(item_id, text), ...]) -> Served` (e.g. `daemon.tools.closed_loop.ScorerOrder`)."""

CLOSED_LOOP_CANDIDATES = 2  # retrieval returns this many pages' worth of candidates for the model to order


class _Traffic:
    """Mutable state of one generation run: clock, counters, sessions."""

    def __init__(self, cfg: SimConfig, shop: Shop, order: PageOrder | None = None) -> None:
        self.cfg, self.shop, self.order = cfg, shop, order
        self.rng = random.Random(cfg.seed * 1_000_003 + 29)
        self.bad_rng = random.Random(cfg.seed * 1_000_003 + 31)
        self.ranker = LexicalRanker(shop, np.random.default_rng([cfg.seed, 37]))
        self.clock = 0  # microseconds since cfg.start_ts
        self.n_events = self.n_requests = self.n_sessions = self.n_bad = 0
        self.n_users = max(20, cfg.n_events // 40)
        self.session: tuple[str, str] | None = None

    def tick(self, lo_ms: float, hi_ms: float) -> str:
        self.clock += max(1, int(self.rng.uniform(lo_ms, hi_ms) * 1000))
        return _ts(self.cfg.start_ts, self.clock)

    def catalog(self, items: list[Item], phase: Phase) -> Iterator[SimRecord]:
        for it in items:
            payload = it.payload(self.tick(0.5, 3.0))
            yield SimRecord("catalog", "catalog", it.item_id.encode(), _encode(payload), payload, phase)

    def page(self, phase: Phase) -> list[tuple[dict[str, Any], int]]:
        """One search request: feedback payloads (in time order) with the hidden grade of each item."""
        rng, cfg = self.rng, self.cfg
        if self.session is None or rng.random() < NEW_SESSION_RATE:
            self.n_sessions += 1
            user = f"u-{cfg.seed}-{rng.randrange(self.n_users):05d}"
            self.session = (f"s-{cfg.seed}-{self.n_sessions:06d}", user)
        self.n_requests += 1
        request_id = f"r-{cfg.seed}-{self.n_requests:07d}"
        intent: Intent = self.shop.sample_intent(rng, phase)
        query = render_query(intent, rng, phase)
        served: Served | None = None
        if self.order is None:
            shown = [self.shop.items[i] for i in self.ranker.rank(query, phase, cfg.page_size)]
        else:  # closed loop: retrieval gives candidates, the live model orders them (as real shops do)
            k = min(len(self.shop.catalog(phase)), CLOSED_LOOP_CANDIDATES * cfg.page_size)
            cands = [self.shop.items[i] for i in self.ranker.rank(query, phase, k)]
            served = self.order(query, [(it.item_id, product_text(it.payload())) for it in cands])
            shown = [cands[i] for i in served.order[: cfg.page_size]]
        grades = [relevance(intent, it, phase) for it in shown]
        self.tick(500.0, 4000.0)  # think time between requests

        def event(action: str, pos: int, ts: str) -> tuple[dict[str, Any], int]:
            self.n_events += 1
            item = shown[pos]
            payload: dict[str, Any] = {
                "event_id": f"e-{cfg.seed}-{self.n_events:08d}",
                "ts": ts,
                "query": query,
                "item_id": item.item_id,
                "action": action,
                "position": pos,
                "request_id": request_id,
                "session_id": self.session[0] if self.session else None,
                "user_id": self.session[1] if self.session else None,
            }
            if rng.random() < ITEM_TEXT_RATE:
                payload["item_text"] = product_text(item.payload())
            if served is not None and served.explore is not None and served.ranked_positions is not None:
                payload["explore"] = True  # the event schema's mark (a bool; the mode stays with the scorer)
                payload["ranked_position"] = served.ranked_positions[pos]
            return payload, grades[pos]

        out = [event("impression", pos, self.tick(0.001, 0.01)) for pos in range(len(shown))]
        for pos, grade in enumerate(grades):
            p = examine_probability(pos) * CLICK_GIVEN_GRADE[grade] + NOISE_CLICK
            if rng.random() >= p:
                continue
            out.append(event("click", pos, self.tick(1000.0, 15000.0)))
            if rng.random() < CART_GIVEN_CLICK[grade]:
                out.append(event("add_to_cart", pos, self.tick(3000.0, 60000.0)))
                if rng.random() < PURCHASE_GIVEN_CART[grade]:
                    out.append(event("purchase", pos, self.tick(10000.0, 120000.0)))
                    break  # a satisfied shopper stops looking
        return out

    def malformed(self, base: dict[str, Any], phase: Phase) -> SimRecord:
        self.n_bad += 1
        defect, value = malformed_value(base, self.bad_rng, f"e-{self.cfg.seed}-m{self.n_bad:07d}")
        key = base["request_id"].encode() if self.bad_rng.random() < 0.5 else None
        return SimRecord("malformed", "feedback", key, value, None, phase, defect=defect)


def generate(cfg: SimConfig, order: PageOrder | None = None) -> Iterator[SimRecord]:
    """Yield the simulated records for `cfg`, in publishing order, deterministically for `cfg.seed`.

    First the launch catalog, then `cfg.n_events` feedback events; at the drift point the new-brand
    items are published and the post-drift phase begins. With `malformed_rate` > 0, a malformed
    record follows a feedback event with that probability. With `order` (closed loop), each page is the
    live model's order of the shop's retrieval candidates instead of the production lexical ranker's.
    """
    shop = Shop.build(cfg.seed, cfg.n_items)
    traffic = _Traffic(cfg, shop, order)
    phase: Phase = "pre"
    drift_index = None if cfg.drift_at is None else round(cfg.drift_at * cfg.n_events)
    yield from traffic.catalog(shop.catalog("pre"), phase)
    emitted = 0
    while emitted < cfg.n_events:
        if phase == "pre" and drift_index is not None and emitted >= drift_index:
            phase = "post"
            yield from traffic.catalog(shop.new_items, phase)
        for payload, grade in traffic.page(phase):
            if emitted >= cfg.n_events:
                break
            emitted += 1
            key = payload["request_id"].encode()
            yield SimRecord("feedback", "feedback", key, _encode(payload), payload, phase, grade=grade)
            if cfg.malformed_rate > 0 and traffic.bad_rng.random() < cfg.malformed_rate:
                yield traffic.malformed(payload, phase)


def eval_judgements(cfg: SimConfig, phase: Phase, n_queries: int = 40, candidates: int = 30) -> list[dict]:
    """Ground-truth judgements for `n_queries` distinct evaluation queries of `phase`.

    Each entry: `{"query", "phase", "intent", "items": [{"item_id", "text", "grade"}]}` with up to
    `candidates` items mixing relevant ones (at least one grade >= 2), grade-1 items, hard negatives
    (grade 0 but sharing an attribute with the query) and random zeros, in shuffled order. The
    queries are drawn from their own random stream, so they differ from the traffic's.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")
    shop = Shop.build(cfg.seed, cfg.n_items)
    rng = random.Random(cfg.seed * 1_000_003 + (101 if phase == "pre" else 202))
    pool = shop.catalog(phase)
    out: list[dict] = []
    seen: set[str] = set()
    for _ in range(n_queries * 50):
        if len(out) >= n_queries:
            break
        intent = shop.sample_intent(rng, phase)
        query = render_query(intent, rng, phase)
        by_grade: dict[int, list] = {g: [] for g in range(4)}
        for it in pool:
            by_grade[relevance(intent, it, phase)].append(it)
        high = by_grade[3] + by_grade[2]
        if query in seen or not high or not by_grade[0]:
            continue
        seen.add(query)
        rng.shuffle(high)
        chosen = high[: max(1, candidates // 5)]
        chosen += rng.sample(by_grade[1], min(len(by_grade[1]), candidates // 4))
        wanted = intent.constraints
        zeros = by_grade[0][:]
        rng.shuffle(zeros)
        hard = [z for z in zeros if any(z.value(k) == v for k, v in wanted.items())]
        n_zero = max(1, candidates - len(chosen))
        picked = hard[: n_zero // 2]
        picked_ids = {z.item_id for z in picked}
        picked += [z for z in zeros if z.item_id not in picked_ids][: n_zero - len(picked)]
        chosen += picked
        rng.shuffle(chosen)
        out.append(
            {
                "query": query,
                "phase": phase,
                "intent": {"category": intent.category, **wanted},
                "items": [
                    {"item_id": it.item_id, "text": product_text(it.payload()), "grade": relevance(intent, it, phase)}
                    for it in chosen
                ],
            }
        )
    return out
