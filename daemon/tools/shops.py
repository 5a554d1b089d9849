"""A family of simulated shops for judging learning across shops, not on one.

Shops differ in product domain (`shop_domains`: fashion, electronics, home & garden), catalogue size,
relevance rule, click model and in who orders the result page:

* `random`: the retrieved items in random order (the friendliest logs: no position/relevance coupling);
* `lexical`: a fixed, noisy lexical ranker (like the demo shop's production ranker);
* `closed`: a callable `order(query, texts) -> scores` (the live model: in the bench the in-process
  Ranker of the current champion; in the daemon's simulator the scorer's `/v1/score`), as real shops do.

Retrieval is always lexical (the top `retrieve` items by token overlap), so every logging policy shows
plausible candidates; the policy only orders them, and the page shows the first `page_size`.

Clicks follow the examination hypothesis with extras (`ClickModel`): P(click) = P(examine k) *
P(click | grade, trust) + noise, with P(examine k) = 1 / (k + 1) ** eta. Trust bias adds clicks on
irrelevant items that are examined (more at the top, where more is examined). `explore_rate` randomizes
(shuffles) a share of pages and marks their events (`dataset.EXPLORE_FIELD`, `RANKED_POSITION_FIELD`).

Everything is deterministic for a seed. `judgements` gives ground-truth graded sets for unseen queries
(its own random stream), `served_judgements` the graded candidates of the shop's own pages;
`daemon.tools.semi_synthetic.clicks_from_judgements` turns any judged set (a shop's or an operator's file)
into position-biased click traffic.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from adapters.dataset import EXPLORE_FIELD, RANKED_POSITION_FIELD
from adapters.product_text import product_text
from daemon.tools.shop_domains import DOMAINS, Domain
from daemon.tools.shop_specs import FAMILY, ClickModel, ShopSpec, family_spec, with_policy

__all__ = [
    "FAMILY",
    "ClickModel",
    "FamilyShop",
    "ShopSpec",
    "family_spec",
    "with_policy",
]

OrderFn = Callable[[str, Sequence[str]], Sequence[float]]

CART_GIVEN_CLICK = (0.02, 0.1, 0.3, 0.5)
PURCHASE_GIVEN_CART = (0.1, 0.25, 0.45, 0.65)
_INTENT_KEYS = ("colour", "material", "feature", "brand", "size")
_INTENT_WEIGHTS = (0.3, 0.2, 0.25, 0.15, 0.1)
_T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FamilyItem:
    item_id: str
    title: str
    brand: str
    category: str
    attributes: Mapping[str, str]  # internal slot names: colour, material, feature, size
    text: str

    def value(self, key: str) -> str | None:
        return self.brand.lower() if key == "brand" else self.attributes.get(key)


@dataclass(frozen=True)
class Intent:
    category: str
    attrs: tuple[tuple[str, str], ...]


_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return [t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t
            for t in _TOKEN.findall(text.lower())]


class FamilyShop:
    """A built shop: catalogue, hidden tastes, query renderer, lexical retrieval, ground truth."""

    def __init__(self, spec: ShopSpec, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self.domain: Domain = DOMAINS[spec.domain]
        rng = random.Random(f"{spec.name}:{seed}:catalog")
        d = self.domain
        brands = list(d.brands)
        rng.shuffle(brands)
        # hidden brand taste (rule brand_pref): invisible in queries, learnable from clicks on texts
        self.loved, self.disliked = set(brands[:2]), set(brands[-3:])
        cats = sorted(d.categories)
        rng.shuffle(cats)
        self.drifted = set(cats[: round(spec.drift_categories * len(cats))])
        # post-drift taste: in drifted categories, one feature value becomes what shoppers want
        self.drift_feature = {c: rng.choice(d.categories[c].features) for c in sorted(self.drifted)}
        items: list[FamilyItem] = []
        names = sorted(d.categories)
        for i in range(spec.n_items):
            cat = names[i % len(names)] if i < len(names) else rng.choice(names)
            cs = d.categories[cat]
            attrs = {"colour": rng.choice(d.colours), "material": rng.choice(cs.materials),
                     "feature": rng.choice(cs.features), "size": rng.choice(cs.sizes)}
            brand, line = rng.choice(d.brands), rng.choice(d.lines)
            title = f"{brand} {line} {attrs['feature'].title()} {attrs['material'].title()} {cs.noun} - " \
                    f"{attrs['colour'].title()}"
            payload: dict[str, Any] = {"item_id": f"{spec.domain[:3]}-{seed}-{i:05d}", "title": title, "brand": brand,
                       "category": cat, "attributes": {d.attr_names.get(k, k): v for k, v in attrs.items()}}
            items.append(FamilyItem(str(payload["item_id"]), title, brand, cat, attrs, product_text(payload)))
        self.items = tuple(items)
        self._build_lexical(np.random.default_rng(rng.getrandbits(32)))

    # ----- ground truth ---------------------------------------------------------------------------

    def relevance(self, intent: Intent, item: FamilyItem, phase: str = "pre") -> int:
        """Hidden grade 0..3.

        attributes: same category: 3 if every constraint matches, 2 if at least half, else 1; a related
          category matching a constraint: 1; else 0 (the demo shop's rule).
        strict: as attributes, but related categories are 0 and a missed brand caps the grade at 1.
        brand_pref: as attributes, then two loved brands gain a grade and three disliked brands lose one
          (within the category, never below 1): a taste that no query states.
        Post-drift (`phase="post"`), in the drifted categories the drift feature gains a grade and exact
        matches without it drop to 2; other categories are unchanged.
        """
        rule = self.spec.rule
        wanted = intent.attrs
        matched = sum(1 for k, v in wanted if item.value(k) == v)
        if item.category != intent.category:
            if rule == "strict":
                return 0
            related = item.category in self.domain.categories[intent.category].related
            return 1 if related and matched > 0 else 0
        grade = 3 if matched == len(wanted) else 2 if 2 * matched >= len(wanted) else 1
        if rule == "strict" and any(k == "brand" and item.value(k) != v for k, v in wanted):
            grade = min(grade, 1)
        if rule == "brand_pref":
            if item.brand in self.loved:
                grade = min(3, grade + 1)
            elif item.brand in self.disliked:
                grade = max(1, grade - 1)
        if phase == "post" and item.category in self.drifted:
            if item.attributes.get("feature") == self.drift_feature[item.category]:
                grade = min(3, grade + 1)
            elif grade == 3:
                grade = 2
        return grade

    # ----- intents and queries ----------------------------------------------------------------------

    def sample_intent(self, rng: random.Random) -> Intent:
        target = rng.choice(self.items)
        n = rng.choices((1, 2, 3), weights=(0.45, 0.4, 0.15))[0]
        keys: list[str] = []
        while len(keys) < n:
            k = rng.choices(_INTENT_KEYS, weights=_INTENT_WEIGHTS)[0]
            if k not in keys:
                keys.append(k)
        return Intent(target.category, tuple((k, v) for k in keys if (v := target.value(k)) is not None))

    def render_query(self, intent: Intent, rng: random.Random) -> str:
        d, c = self.domain, dict(intent.attrs)
        cs = d.categories[intent.category]
        adj: list[str] = []
        if "colour" in c:
            adj.append(rng.choice(d.colour_synonyms.get(c["colour"], (c["colour"],))))
        if "material" in c:
            adj.append(rng.choice(d.material_synonyms.get(c["material"], (c["material"],))))
        if "feature" in c:
            adj.append(rng.choice(d.feature_synonyms.get(c["feature"], (c["feature"],))))
        if len(adj) > 1 and rng.random() < 0.3:
            rng.shuffle(adj)
        noun = rng.choice(cs.synonyms)
        words = [*adj, noun] if rng.random() < 0.85 else [noun, *adj]
        if "brand" in c:
            words.insert(0, c["brand"])
        if "size" in c:
            words.append(c["size"])
        tokens = " ".join(words).split()
        if rng.random() < self.spec.typo_rate:
            long_ones = [i for i, t in enumerate(tokens) if len(t) >= 5]
            if long_ones:
                i = rng.choice(long_ones)
                t = tokens[i]
                j = rng.randrange(1, len(t) - 1)
                tokens[i] = t[:j] + t[j + 1] + t[j] + t[j + 2 :]
        return " ".join(tokens)

    # ----- lexical retrieval / ranking --------------------------------------------------------------

    def _build_lexical(self, rng: np.random.Generator) -> None:
        d = self.domain
        vocab: dict[str, int] = {}
        rows = [sorted({vocab.setdefault(t, len(vocab)) for t in _tokens(it.text)}) for it in self.items]
        m = np.zeros((len(rows), len(vocab)), dtype=np.float32)
        for i, cols in enumerate(rows):
            m[i, cols] = 1.0
        for name, cs in d.categories.items():
            for t in _tokens(f"{name} {cs.noun}"):
                if t in vocab:
                    m[:, vocab[t]] *= 2.0
        self._vocab, self._matrix = vocab, m
        self._popularity = (0.3 * rng.standard_normal(len(rows))).astype(np.float32)
        pairs: dict[str, str] = {}
        for name, cs in d.categories.items():
            pairs.update({syn: f"{name} {cs.noun}" for syn in cs.synonyms})
        for table in (d.colour_synonyms, d.material_synonyms, d.feature_synonyms):
            for canon, syns in table.items():
                pairs.update({syn: canon for syn in syns[1:]})
        self._synonyms = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def lexical_scores(self, query: str, rng: np.random.Generator | None, noise: float) -> np.ndarray:
        text = f" {query.lower()} "
        for phrase, canon in self._synonyms:
            if f" {phrase} " in text:
                text = text.replace(f" {phrase} ", f" {canon} ")
        cols = sorted({self._vocab[t] for t in _tokens(text) if t in self._vocab})
        s = self._matrix[:, cols].sum(axis=1) + self._popularity
        if rng is not None and noise > 0:
            s = s + noise * rng.standard_normal(s.size).astype(np.float32)
        return s

    def retrieve(self, query: str, k: int, rng: np.random.Generator | None, noise: float) -> list[int]:
        s = self.lexical_scores(query, rng, noise)
        top = np.argpartition(-s, k - 1)[:k]
        return [int(i) for i in top[np.argsort(-s[top], kind="stable")]]

    # ----- traffic ----------------------------------------------------------------------------------

    def traffic(self, n_pages: int, *, order: OrderFn | None = None, phase: str = "pre",
                stream: str = "traffic", start: datetime = _T0) -> Iterator[dict[str, Any]]:
        """Feedback events (dicts with a datetime `ts`, ready for `dataset.build_groups`) of `n_pages` pages.

        Each event also carries `grade`, the hidden relevance of its item (for analysis only). `order` is
        needed for the closed-loop policy. Deterministic for (spec, seed, stream, phase).
        """
        spec = self.spec
        if spec.policy == "closed" and order is None:
            raise ValueError(f"shop {spec.name} is closed loop: pass order=(query, texts) -> scores")
        rng = random.Random(f"{spec.name}:{self.seed}:{stream}:{phase}")
        nrng = np.random.default_rng(rng.getrandbits(32))
        ts = start
        ev_n = 0
        for page in range(n_pages):
            intent = self.sample_intent(rng)
            query = self.render_query(intent, rng)
            cand = self.retrieve(query, spec.retrieve, nrng if spec.policy == "lexical" else None, spec.lexical_noise)
            shown = self._ordered(cand, query, rng, order)[: spec.page_size]
            ranked = list(range(len(shown)))
            explore = spec.explore_rate > 0 and rng.random() < spec.explore_rate
            if explore:
                rng.shuffle(ranked)  # ranked[p] = the rank of the item now shown at position p
                shown = [shown[r] for r in ranked]
            grades = [self.relevance(intent, self.items[i], phase) for i in shown]
            rid = f"{spec.name}-{self.seed}-{stream}-{phase}-{page:06d}"
            ts += timedelta(seconds=rng.uniform(1, 20))

            bases = []
            for pos, i in enumerate(shown):
                it = self.items[i]
                b: dict[str, Any] = {"ts": ts, "query": query, "item_id": it.item_id, "position": pos,
                                     "request_id": rid, "session_hash": None, "item_text": it.text,
                                     "grade": grades[pos]}
                if explore:
                    b[EXPLORE_FIELD] = "shuffle"
                    b[RANKED_POSITION_FIELD] = ranked[pos]
                bases.append(b)

            def event(action: str, pos: int, when: datetime, bases: list[dict[str, Any]] = bases) -> dict[str, Any]:
                nonlocal ev_n
                ev_n += 1
                return {**bases[pos], "event_id": f"{bases[pos]['request_id']}-{ev_n}", "action": action, "ts": when}

            for pos in range(len(shown)):
                yield event("impression", pos, ts)
            for pos, g in enumerate(grades):
                if rng.random() >= spec.clicks.p_click(pos, g):
                    continue
                yield event("click", pos, ts + timedelta(seconds=1 + pos))
                if rng.random() < CART_GIVEN_CLICK[g]:
                    yield event("add_to_cart", pos, ts + timedelta(seconds=2 + pos))
                    if rng.random() < PURCHASE_GIVEN_CART[g]:
                        yield event("purchase", pos, ts + timedelta(seconds=3 + pos))
                        if spec.clicks.stop_after_purchase:
                            break

    def _ordered(self, cand: list[int], query: str, rng: random.Random, order: OrderFn | None) -> list[int]:
        """The retrieved candidates in the order the shop's logging policy shows them."""
        if self.spec.policy == "random":
            rng.shuffle(cand)
        elif self.spec.policy == "closed":
            assert order is not None
            scores = np.asarray(order(query, [self.items[i].text for i in cand]), dtype=np.float64)
            cand = [cand[j] for j in np.argsort(-scores, kind="stable")]
        return cand

    def _draws(self, rng: random.Random, n_queries: int, out: list[dict[str, Any]]
               ) -> Iterator[tuple[Intent, str, bool]]:
        """(intent, query, new) drawn with `rng` until `out` holds `n_queries` entries, at most 50 draws per
        entry wanted. A query counts as taken, never new again, once the caller appended an entry for it."""
        seen: set[str] = set()
        for _ in range(n_queries * 50):
            if len(out) >= n_queries:
                return
            intent = self.sample_intent(rng)
            query = self.render_query(intent, rng)
            n = len(out)
            yield intent, query, query not in seen
            if len(out) > n:
                seen.add(query)

    def _judged_entry(self, intent: Intent, query: str, phase: str, graded: Iterable[tuple[int, int]]
                      ) -> dict[str, Any]:
        """One judged query in the format of `judgements`; `graded` holds (item index, grade) in order."""
        return {"query": query, "phase": phase, "intent": {"category": intent.category, **dict(intent.attrs)},
                "items": [{"item_id": self.items[i].item_id, "text": self.items[i].text, "grade": g}
                          for i, g in graded]}

    def judgements(self, n_queries: int = 60, candidates: int = 30, phase: str = "pre",
                   stream: str = "judgements") -> list[dict[str, Any]]:
        """Ground truth for `n_queries` distinct unseen queries: `{"query", "intent", "items": [{item_id,
        text, grade}]}`, each with up to `candidates` items (relevant ones, grade 1, hard negatives that
        share an attribute or the lexical top, random zeros), shuffled. Own random stream."""
        rng = random.Random(f"{self.spec.name}:{self.seed}:{stream}:{phase}")
        out: list[dict[str, Any]] = []
        for intent, query, new in self._draws(rng, n_queries, out):
            by: dict[int, list[int]] = {g: [] for g in range(4)}
            for i, it in enumerate(self.items):
                by[self.relevance(intent, it, phase)].append(i)
            high = by[3] + by[2]
            if not new or not high or not by[0]:
                continue
            rng.shuffle(high)
            chosen = high[: max(1, candidates // 4)]
            chosen += rng.sample(by[1], min(len(by[1]), candidates // 4))
            lexical = [i for i in self.retrieve(query, candidates, None, 0.0) if i not in set(chosen)]
            n_zero = max(1, candidates - len(chosen))
            zeros = [i for i in lexical if i in set(by[0])][: n_zero // 2]
            rest = [i for i in by[0] if i not in set(zeros)]
            rng.shuffle(rest)
            chosen += zeros + rest[: n_zero - len(zeros)]
            rng.shuffle(chosen)
            out.append(self._judged_entry(intent, query, phase,
                                          ((i, self.relevance(intent, self.items[i], phase)) for i in chosen)))
        return out

    def served_judgements(self, n_queries: int = 60, phase: str = "pre",
                          stream: str = "served") -> list[dict[str, Any]]:
        """Ground truth on what shoppers would see: `n_queries` distinct queries (own random stream), each
        with the candidates the shop's retrieval hands the ranker (`retrieve` items, as in `traffic`) and
        their hidden grades, in `judgements`' format. Queries whose candidates are all grade 0 are skipped
        (every order scores the same). `judgements` asks whether a model ranks a broad candidate set well;
        this asks whether it orders the shop's own pages better."""
        spec = self.spec
        rng = random.Random(f"{spec.name}:{self.seed}:{stream}:{phase}")
        nrng = np.random.default_rng(rng.getrandbits(32))
        out: list[dict[str, Any]] = []
        for intent, query, new in self._draws(rng, n_queries, out):
            cand = self.retrieve(query, spec.retrieve, nrng if spec.policy == "lexical" else None, spec.lexical_noise)
            grades = [self.relevance(intent, self.items[i], phase) for i in cand]
            if not new or not any(grades):
                continue
            rng.shuffle(order := list(range(len(cand))))
            out.append(self._judged_entry(intent, query, phase, ((cand[j], grades[j]) for j in order)))
        return out
