"""The traffic simulator: determinism, event schema, click model, drift, judgements, malformed, CLI."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import daemon.cli
from daemon.settings import Settings
from daemon.tools.shop import POST_VOCABULARY, Intent, Item, Shop, product_text, relevance, render_query
from daemon.tools.sim_malformed import MALFORMED_KINDS
from daemon.tools.sim_output import paced, read_jsonl
from daemon.tools.simulate import ACTIONS, SimConfig, SimRecord, eval_judgements, generate

MAX_BYTES = 65536
FEEDBACK_KEYS = {
    "event_id",
    "ts",
    "query",
    "item_id",
    "action",
    "item_text",
    "position",
    "request_id",
    "session_id",
    "user_id",
}
CATALOG_KEYS = {"item_id", "title", "description", "category", "brand", "attributes", "ts"}


def _aware(ts: Any) -> datetime:
    assert isinstance(ts, str)
    parsed = datetime.fromisoformat(ts)
    assert parsed.tzinfo is not None and parsed.utcoffset() is not None
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        raise AssertionError(f"{ts} does not exist in UTC") from None
    assert utc < datetime(2100, 1, 1, tzinfo=UTC)  # not far in the future
    return parsed


def _str(d: dict, key: str, lo: int = 1, hi: int = 10**6, required: bool = True) -> None:
    if key not in d and not required:
        return
    assert isinstance(d[key], str) and lo <= len(d[key]) <= hi, (key, d.get(key))


def check_feedback(value: bytes) -> dict:
    """Strict feedback-schema check; raises ValueError (bad JSON/UTF-8) or AssertionError."""
    assert len(value) <= MAX_BYTES
    d = json.loads(value)
    assert isinstance(d, dict) and set(d) <= FEEDBACK_KEYS, d
    _str(d, "event_id", hi=128)
    _aware(d["ts"])
    _str(d, "query", 1, 512)
    _str(d, "item_id", 1, 128)
    assert d["action"] in ACTIONS
    for key in ("item_text", "request_id", "session_id", "user_id"):
        _str(d, key, required=False)
    if "position" in d:
        assert type(d["position"]) is int and d["position"] >= 0
    return d


def check_catalog(value: bytes) -> dict:
    d = json.loads(value)
    assert isinstance(d, dict) and set(d) <= CATALOG_KEYS
    _str(d, "item_id", 1, 128)
    _str(d, "title")
    for key in ("description", "category", "brand"):
        _str(d, key, required=False)
    assert isinstance(d["attributes"], dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in d["attributes"].items())
    _aware(d["ts"])
    return d


def is_valid_feedback(value: bytes) -> bool:
    try:
        check_feedback(value)
    except (ValueError, AssertionError, KeyError):
        return False
    return True


@pytest.fixture(scope="module")
def drifted() -> list[SimRecord]:
    return list(generate(SimConfig(seed=3, n_items=120, n_events=6000, drift_at=0.5)))


def test_deterministic_for_a_seed() -> None:
    cfg = SimConfig(seed=11, n_items=60, n_events=800, drift_at=0.5, malformed_rate=0.05)
    a = [(r.kind, r.key, r.value) for r in generate(cfg)]
    assert a == [(r.kind, r.key, r.value) for r in generate(cfg)]
    b = [(r.kind, r.key, r.value) for r in generate(SimConfig(seed=12, n_items=60, n_events=800))]
    assert a != b
    assert eval_judgements(cfg, "post", 5) == eval_judgements(cfg, "post", 5)


def test_every_record_matches_the_schema(drifted: list[SimRecord]) -> None:
    feedback = [r for r in drifted if r.kind == "feedback"]
    catalog = [r for r in drifted if r.kind == "catalog"]
    assert len(feedback) == 6000 and len(catalog) == 120 + len(Shop.build(3, 120).new_items)
    for r in catalog:
        d = check_catalog(r.value)
        assert r.key == d["item_id"].encode() and r.stream == "catalog"
    pages: dict[str, set] = defaultdict(set)
    for r in feedback:
        d = check_feedback(r.value)
        assert r.key == d["request_id"].encode() and r.payload == d and r.stream == "feedback"
        pages[d["request_id"]].add((d["query"], d["session_id"], d["user_id"]))
    assert all(len(v) == 1 for v in pages.values())  # a page shares query, session and user
    ids = [r.payload["event_id"] for r in feedback if r.payload]
    assert len(set(ids)) == len(ids)
    stamps = [_aware(json.loads(r.value)["ts"]) for r in drifted]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    actions = Counter(r.payload["action"] for r in feedback if r.payload)
    assert set(actions) == set(ACTIONS) and actions["impression"] > actions["click"] > actions["purchase"]
    with_text = [r.payload for r in feedback if r.payload and "item_text" in r.payload]
    assert 0 < len(with_text) < len(feedback) / 4
    texts = {r.payload["item_id"]: product_text(r.payload) for r in catalog if r.payload}
    assert all(p["item_text"] == texts[p["item_id"]] for p in with_text)


def _ctr(records: list[SimRecord]) -> dict[tuple[int, int], list[int]]:
    """(grade, position) -> [impressions, clicks]."""
    stats: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.kind == "feedback" and r.payload and r.grade is not None:
            slot = 0 if r.payload["action"] == "impression" else 1 if r.payload["action"] == "click" else None
            if slot is not None:
                stats[(r.grade, r.payload["position"])][slot] += 1
    return stats


def _rate(stats: dict[tuple[int, int], list[int]], grades: set[int], positions: range) -> float:
    imp = sum(v[0] for (g, p), v in stats.items() if g in grades and p in positions)
    clk = sum(v[1] for (g, p), v in stats.items() if g in grades and p in positions)
    assert imp > 100
    return clk / imp


def test_clicks_are_position_biased_and_relevance_driven() -> None:
    stats = _ctr(list(generate(SimConfig(seed=5, n_items=150, n_events=20000))))
    assert _rate(stats, {0, 1, 2, 3}, range(1)) > 1.5 * _rate(stats, {0, 1, 2, 3}, range(5, 6))
    for grades in ({1}, {2, 3}):  # same relevance, higher position -> more clicks
        assert _rate(stats, grades, range(2)) > 1.3 * _rate(stats, grades, range(5, 10))
    for positions in (range(3), range(3, 10)):  # same positions, more relevant -> more clicks
        assert _rate(stats, {2, 3}, positions) > 2 * _rate(stats, {0}, positions)


def _words(records: list[SimRecord], phase: str) -> set[str]:
    return {
        w
        for r in records
        if r.kind == "feedback" and r.phase == phase and r.payload
        for w in r.payload["query"].split()
    }


def test_drift_brings_new_items_vocabulary_and_preferences(drifted: list[SimRecord]) -> None:
    pre, post = _words(drifted, "pre"), _words(drifted, "post")
    assert not pre & POST_VOCABULARY
    assert len(post & POST_VOCABULARY) >= 10 and len((post - pre) & POST_VOCABULARY) >= 10
    first_post = next(i for i, r in enumerate(drifted) if r.phase == "post")
    assert first_post > 0.45 * len(drifted)
    early = {r.payload["item_id"] for r in drifted[:first_post] if r.payload}
    new = [r.payload for r in drifted[first_post:] if r.kind == "catalog" and r.payload]
    assert new and all(p["item_id"] not in early for p in new)
    assert {p["brand"] for p in new}.isdisjoint({r.payload["brand"] for r in drifted[:120] if r.payload})
    shown_new = {r.payload["item_id"] for r in drifted[first_post:] if r.kind == "feedback" and r.payload}
    assert shown_new & {p["item_id"] for p in new}
    # the hidden preference moves: winter items gain, non-winter exact matches lose
    shop, rng = Shop.build(3, 120), random.Random(0)
    changed = 0
    for _ in range(50):
        intent = shop.sample_intent(rng, "pre")
        for item in shop.catalog("pre"):
            a, b = relevance(intent, item, "pre"), relevance(intent, item, "post")
            winter = item.attributes["season"] == "winter"
            assert (b >= a if winter else b <= a) and abs(a - b) <= 1
            changed += a != b
    assert changed > 100


def test_relevance_grades() -> None:
    def item(category: str, **attrs: str) -> Item:
        base = {"colour": "red", "material": "mesh", "feature": "breathable", "size": "42", "season": "summer"}
        return Item("i", "t", "Velora", category, {**base, **attrs}, "d")

    intent = Intent("sneakers", (("colour", "black"), ("material", "leather")))
    assert relevance(intent, item("sneakers", colour="black", material="leather"), "pre") == 3
    assert relevance(intent, item("sneakers", colour="black"), "pre") == 2
    assert relevance(intent, item("sneakers"), "pre") == 1
    assert relevance(intent, item("boots", colour="black"), "pre") == 1  # related category
    assert relevance(intent, item("boots"), "pre") == 0
    assert relevance(intent, item("dresses", colour="black", material="leather"), "pre") == 0
    assert relevance(intent, item("sneakers", colour="black", material="leather"), "post") == 2
    assert relevance(intent, item("sneakers", season="winter"), "post") == 2
    assert relevance(Intent("sneakers", (("brand", "velora"),)), item("sneakers"), "pre") == 3


def test_queries_use_synonyms_and_typos() -> None:
    rng = random.Random(1)
    intent = Intent("sneakers", (("colour", "grey"),))
    pre = [render_query(intent, rng, "pre") for _ in range(400)]
    post = [render_query(intent, rng, "post") for _ in range(400)]
    assert {"trainers", "sneakers", "gray", "grey"} <= {w for q in pre for w in q.split()}
    assert {"kicks", "graphite"} <= {w for q in post for w in q.split()}
    clean = {"grey", "gray", "sneakers", "trainers", "running", "shoes", "sneaker"}
    typos = [q for q in pre if not set(q.split()) <= clean]
    assert 0.04 < len(typos) / len(pre) < 0.25


def test_judgements_are_graded() -> None:
    cfg = SimConfig(seed=9, n_items=200)
    shop = Shop.build(9, 200)
    texts = {it.item_id: product_text(it.payload()) for it in shop.items}
    for phase in ("pre", "post"):
        judged = eval_judgements(cfg, phase, n_queries=20, candidates=30)
        assert len(judged) == 20 and len({j["query"] for j in judged}) == 20
        for j in judged:
            grades = [x["grade"] for x in j["items"]]
            assert j["phase"] == phase and len(grades) == 30 and len({x["item_id"] for x in j["items"]}) == 30
            assert max(grades) >= 2 and grades.count(0) >= 5 and set(grades) <= {0, 1, 2, 3}
            assert all(x["text"] == texts[x["item_id"]] for x in j["items"])
            if phase == "pre":
                assert all(
                    shop.items[[i.item_id for i in shop.items].index(x["item_id"])].launch == "pre" for x in j["items"]
                )


def test_malformed_records_are_really_malformed() -> None:
    cfg = SimConfig(seed=2, n_items=40, n_events=3000, malformed_rate=0.1)
    records = list(generate(cfg))
    bad = [r for r in records if r.kind == "malformed"]
    assert 200 < len(bad) < 400
    assert {r.defect for r in bad} == set(MALFORMED_KINDS)
    assert not any(is_valid_feedback(r.value) for r in bad)
    assert any(len(r.value) > MAX_BYTES for r in bad)
    clean = [r.value for r in generate(SimConfig(seed=2, n_items=40, n_events=3000))]
    assert [r.value for r in records if r.kind != "malformed"] == clean  # injection leaves the rest alone


def test_cli_writes_jsonl_that_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, judged = tmp_path / "traffic.jsonl", tmp_path / "truth.json"
    argv = [
        "simulate",
        "--seed",
        "4",
        "--items",
        "40",
        "--events",
        "400",
        "--drift-at",
        "0.5",
        "--malformed-rate",
        "0.1",
        "--out",
        str(out),
        "--judgements",
        str(judged),
        "--eval-queries",
        "5",
    ]
    assert daemon.cli.main(argv) == 0
    settings = Settings()
    expected = [
        (settings.kafka.catalog_topic if r.stream == "catalog" else settings.kafka.feedback_topic, r.key, r.value)
        for r in generate(SimConfig(seed=4, n_items=40, n_events=400, drift_at=0.5, malformed_rate=0.1))
    ]
    assert list(read_jsonl(out)) == expected
    assert '"encoding": "base64"' in out.read_text()  # non-UTF-8 values survive
    doc = json.loads(judged.read_text())
    assert [q["phase"] for q in doc["queries"]] == ["pre"] * 5 + ["post"] * 5
    assert daemon.cli.main(["simulate", "--drift-at", "2", "--out", str(out)]) == 2  # a usage error, one line
    assert "--drift-at: must be within [0, 1]" in capsys.readouterr().err


def test_pacing() -> None:
    records = [r for r, _ in zip(generate(SimConfig(n_items=20, n_events=50)), range(40), strict=False)]
    t0 = time.monotonic()
    assert len(list(paced(records, 400.0))) == 40  # 20 catalog unpaced + 20 feedback at 400/s
    assert time.monotonic() - t0 > 0.04  # 20 paced records at 400/s cannot take less
