"""The strict event schema: documented examples pass, each kind of bad input fails with its reason."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.ingest.events import CatalogIn, FeedbackIn, ParseConfig, Parsed, Rejection, parse_record
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.settings import Settings

CFG = ParseConfig(feedback_topic="fb", catalog_topic="cat", max_message_bytes=65536)
KEY = Pseudonymizer("test-key")

FEEDBACK: dict[str, Any] = {
    "event_id": "e-1", "ts": "2026-11-01T13:00:00+01:00", "query": "red running shoe", "item_id": "sku-42",
    "action": "click", "item_text": "Acme trail shoe, red", "position": 3, "request_id": "r-9",
    "session_id": "s-77", "user_id": "u-7",
}
CATALOG: dict[str, Any] = {
    "item_id": "sku-42", "title": "Trail shoe", "description": "A light shoe", "category": "shoes",
    "brand": "Acme", "attributes": {"color": "red", "sizes": [41, 42], "new": True}, "ts": "2026-11-01T12:00:00Z",
}


def parse(value: bytes | dict[str, Any] | None, topic: str = "fb", pseudonymize: Pseudonymizer = KEY,
          key: bytes | None = b"k") -> Parsed | Rejection:
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return parse_record(topic, 2, 17, key, raw, config=CFG, pseudonymize=pseudonymize)


def rejected(value: bytes | dict[str, Any] | None, topic: str = "fb") -> Rejection:
    out = parse(value, topic)
    assert isinstance(out, Rejection), out
    assert out.value == (json.dumps(value).encode() if isinstance(value, dict) else value)  # original bytes kept
    assert (out.topic, out.partition, out.offset, out.key) == (topic, 2, 17, b"k")
    return out


def test_documented_feedback_example_is_stored_with_pseudonyms():
    out = parse(FEEDBACK)
    assert isinstance(out, Parsed) and out.kind == "feedback" and out.where == "fb[2]@17"
    row = out.row
    assert row["ts"] == datetime(2026, 11, 1, 12, 0, tzinfo=UTC) and row["ts"].utcoffset().total_seconds() == 0
    assert (row["query"], row["item_id"], row["action"], row["position"]) == ("red running shoe", "sku-42", "click", 3)
    assert (row["topic"], row["partition"], row["offset"]) == ("fb", 2, 17)
    assert row["user_hash"] == hmac.new(b"test-key", b"user_id\x00u-7", hashlib.sha256).hexdigest()
    assert row["session_hash"] == hmac.new(b"test-key", b"session_id\x00s-77", hashlib.sha256).hexdigest()
    assert "user_id" not in row and "session_id" not in row
    assert "u-7" not in repr(row) and "s-77" not in repr(row)


def test_minimal_feedback_and_every_action():
    for action in ("impression", "click", "add_to_cart", "purchase"):
        minimal = {k: FEEDBACK[k] for k in ("event_id", "ts", "query", "item_id")} | {"action": action}
        out = parse(minimal)
        assert isinstance(out, Parsed) and out.row["action"] == action
        assert out.row["position"] is None and out.row["user_hash"] is None
    assert isinstance(parse(FEEDBACK | {"item_text": None, "position": 0, "user_id": None}), Parsed)


def test_documented_catalog_example():
    out = parse(CATALOG, topic="cat")
    assert isinstance(out, Parsed) and out.kind == "catalog"
    assert out.row["attributes"] == {"color": "red", "sizes": [41, 42], "new": True}
    assert out.row["ts"] == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    minimal = parse({"item_id": "x", "title": "t", "ts": "2026-11-01T12:00:00Z"}, topic="cat")
    assert isinstance(minimal, Parsed) and minimal.row["attributes"] == {}


def test_models_are_exported_for_producers():
    assert FeedbackIn.model_json_schema()["additionalProperties"] is False
    assert set(CatalogIn.model_fields) == {"item_id", "title", "description", "category", "brand", "attributes", "ts"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not_json"),
        (b"", "not_json"),
        (None, "not_json"),  # tombstone
        (b'{"event_id": "\xff\xfe"}', "bad_utf8"),
        (b"[1, 2]", "not_object"),
        (b'"click"', "not_object"),
        (b"null", "not_object"),
        ({k: v for k, v in FEEDBACK.items() if k != "event_id"}, "schema:event_id"),
        ({k: v for k, v in FEEDBACK.items() if k != "ts"}, "schema:ts"),
        (FEEDBACK | {"event_id": 12345}, "schema:event_id"),
        (FEEDBACK | {"event_id": ""}, "schema:event_id"),
        (FEEDBACK | {"event_id": "e" * 129}, "schema:event_id"),
        (FEEDBACK | {"position": "3"}, "schema:position"),
        (FEEDBACK | {"position": 2.5}, "schema:position"),
        (FEEDBACK | {"position": True}, "schema:position"),
        (FEEDBACK | {"position": -1}, "schema:position"),
        (FEEDBACK | {"position": 2**31}, "schema:position"),
        (FEEDBACK | {"query": ""}, "schema:query"),
        (FEEDBACK | {"query": "q" * 513}, "schema:query"),
        (FEEDBACK | {"query": "bad\u0000query"}, "schema:query"),
        (FEEDBACK | {"item_id": ["a"]}, "schema:item_id"),
        (FEEDBACK | {"item_id": "i" * 129}, "schema:item_id"),
        (FEEDBACK | {"ts": "2026-11-01T12:00:00"}, "schema:ts"),  # naive: no zone
        (FEEDBACK | {"ts": 1795000000}, "schema:ts"),  # epoch numbers are not ISO-8601
        (FEEDBACK | {"ts": "yesterday"}, "schema:ts"),
        (FEEDBACK | {"action": "hover"}, "unknown_action"),
        (FEEDBACK | {"action": "CLICK"}, "unknown_action"),
        (FEEDBACK | {"action": 1}, "unknown_action"),
        (FEEDBACK | {"user_id": 7}, "schema:user_id"),
        (FEEDBACK | {"session": "s-1"}, "unknown_field"),  # strict: a misspelt field is not dropped silently
    ],
)
def test_bad_feedback_is_rejected_with_a_specific_reason(value, reason):
    rej = rejected(value)
    assert rej.reason == reason
    assert rej.message
    assert "u-7" not in rej.message and "s-77" not in rej.message  # messages never quote values


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({k: v for k, v in CATALOG.items() if k != "title"}, "schema:title"),
        (CATALOG | {"attributes": ["red"]}, "schema:attributes"),
        (CATALOG | {"attributes": {"x": "\u0000"}}, "schema:attributes"),
        (CATALOG | {"brand": "b" * 256}, "schema:brand"),
        (CATALOG | {"ts": "2026-11-01 12:00"}, "schema:ts"),
        (CATALOG | {"price": 3}, "unknown_field"),
    ],
)
def test_bad_catalog_is_rejected(value, reason):
    assert rejected(value, topic="cat").reason == reason


def test_non_finite_attribute_numbers_are_rejected():
    raw = json.dumps(CATALOG | {"attributes": {"weight": 1.5}}).encode().replace(b"1.5", b"NaN")
    assert rejected(raw, topic="cat").reason == "schema:attributes"


def test_size_limit_is_checked_before_parsing():
    big = json.dumps(FEEDBACK | {"item_text": "x" * 70_000}).encode()
    rej = rejected(big)
    assert rej.reason == "too_large" and str(len(big)) in rej.message
    limit = ParseConfig.from_settings(Settings(ingest_max_message_bytes=200_000))
    assert isinstance(parse_record("ranktune.feedback", 0, 0, None, big, config=limit, pseudonymize=KEY), Parsed)


def test_unknown_topic_is_rejected():
    assert rejected(FEEDBACK, topic="other").reason == "unknown_topic"


def test_without_a_key_personal_ids_are_dropped():
    out = parse(FEEDBACK, pseudonymize=Pseudonymizer(None))
    assert isinstance(out, Parsed)
    assert out.row["user_hash"] is None and out.row["session_hash"] is None
    assert "u-7" not in repr(out.row) and "s-77" not in repr(out.row)


def test_pseudonyms_are_keyed_and_stable():
    a, b = Pseudonymizer("k1"), Pseudonymizer("k2")
    assert a("user_id", "u-7") == a("user_id", "u-7") != b("user_id", "u-7")
    assert a("user_id", "same") != a("session_id", "same")  # field names separate the domains
    assert len(a("user_id", "u-7") or "") == 64 and a("user_id", None) is None
    assert "k1" not in repr(a)
    assert Pseudonymizer(Settings(ingest_pseudonym_key="k1").ingest.pseudonym_key)("user_id", "u") == a("user_id", "u")
    assert not Pseudonymizer("").enabled


@pytest.mark.parametrize("key", [b"k", b"k" * 64, b"k" * 65, "schl\u00fcssel".encode()])  # short, block size, hashed
def test_pseudonyms_are_hmac_sha256_of_field_nul_value(key):
    p = Pseudonymizer(key)
    for field, value in [("user_id", "u-7"), ("session_id", "s-\u00e9"), ("user_id", "u-8"), ("user_id", "u-7")]:
        msg = field.encode() + b"\x00" + value.encode()
        assert p(field, value) == hmac.new(key, msg, hashlib.sha256).hexdigest()


def test_pseudonym_cache_is_bounded_and_per_key() -> None:
    p, other = Pseudonymizer(b"k"), Pseudonymizer(b"other")
    first = p("user_id", "u-0")
    for i in range(Pseudonymizer.CACHE_SIZE + 10):
        p("user_id", f"u-{i}")
    assert p._cached.cache_info().currsize == Pseudonymizer.CACHE_SIZE  # evicts, never grows past its size
    assert p("user_id", "u-0") == first == hmac.new(b"k", b"user_id\x00u-0", hashlib.sha256).hexdigest()
    assert other("user_id", "u-0") != first


# --- the feedback fast path (msgspec decides what it can; FeedbackIn decides the rest and every rejection) ---

ODD_VALUES: list[Any] = [None, "", "a\u0000b", "\u0000", "a\\u0000b", 0, -1, 2**31, 2**31 - 1, 2.5, 3.0, True, [], {},
                         "x" * 600, "é" * 128, "é" * 129, "😀" * 128, "😀" * 129, "\ud83d\ude00", "\ud800", "\udfff",
                         "click", "héllo ✓",
                         "2026-11-01T12:00:00", "2026-11-01T12:00:00Z", "2026-11-01 12:00:00Z", "2026-11-01T12:00Z",
                         "2026-11-01t12:00:00z", "2026-11-01T12:00:00+0100", "2026-11-01T12:00:00.5+01:00",
                         "2026-11-01T12:00:00.123456Z", "2026-11-01T12:00:00.1234567Z", "2026-02-30T12:00:00Z",
                         "2026-11-01T24:00:00Z", "2026-11-01T12:60:00Z", "2026-11-01T12:00:60Z",
                         "2026-11-01T12:00:00+00:60", "2026-11-01T12:00:00+05:99", "2026-11-01T12:00:00-00:59",
                         "2026-11-01T12:00:00+24:00",
                         "2026-11-01T12:00:00-00:00", "2026-11-01T12:00:00+23:59", "0001-01-01T00:00:00+01:00",
                         "9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00Z", "1795000000", "2026-W44-1T12:00:00Z"]


def _strict(value: bytes) -> Parsed | Rejection:
    """What `FeedbackIn` alone decides (the reference the fast path must match)."""
    from daemon.ingest import events

    fast = events._fast_feedback
    events._fast_feedback = lambda _value: None  # type: ignore[assignment]
    try:
        return parse_record("fb", 2, 17, b"k", value, config=CFG, pseudonymize=KEY)
    finally:
        events._fast_feedback = fast


def test_the_wire_struct_declares_feedbackins_fields_in_order_with_the_same_defaults() -> None:
    import msgspec

    from daemon.ingest.events import _FeedbackWire

    wire = {f.name: (f.required, f.default) for f in msgspec.structs.fields(_FeedbackWire)}
    model = {name: (f.is_required(), None if f.is_required() else f.default)
             for name, f in FeedbackIn.model_fields.items()}
    assert list(wire) == list(model)
    assert {name: (req, None if req else d) for name, (req, d) in wire.items()} == model


def test_the_fast_path_takes_the_plain_event_and_leaves_the_others_to_feedbackin() -> None:
    from daemon.ingest import events

    assert events._fast_feedback(json.dumps(FEEDBACK).encode()) is not None  # the common case never reaches pydantic
    for odd in ({"ts": "2026-11-01 12:00:00Z"}, {"query": "a\u0000b"}, {"position": "3"}, {"extra": 1}):
        assert events._fast_feedback(json.dumps(FEEDBACK | odd).encode()) is None, odd
    assert isinstance(parse(FEEDBACK | {"ts": "2026-11-01 12:00:00Z"}), Parsed)  # FeedbackIn's spelling still stored


def _outcomes_match(value: dict[str, Any] | list[Any], ensure_ascii: bool) -> str:
    raw = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")  # lone surrogates too
    got, want = parse(raw), _strict(raw)
    assert got == want, (value, got, want)
    if isinstance(got, Parsed):  # same values, and timestamps in the same zone
        assert got.row["ts"].utcoffset() == want.row["ts"].utcoffset() == UTC.utcoffset(None)  # type: ignore[union-attr]
    return got.reason if isinstance(got, Rejection) else "stored"


def test_fast_path_gives_exactly_the_strict_models_outcome_for_every_odd_field_value() -> None:
    values: list[Any] = [FEEDBACK, {k: v for k, v in FEEDBACK.items()
                                    if k in ("event_id", "ts", "query", "item_id", "action")}]
    for field in FEEDBACK:
        values.append({k: v for k, v in FEEDBACK.items() if k != field})
        values += [FEEDBACK | {field: odd} for odd in ODD_VALUES]
    values += [FEEDBACK | {"query\u0000": "q"}, FEEDBACK | {"explore": True, "ranked_position": 0},
               FEEDBACK | {"explore": 1}, FEEDBACK | {"ranked_position": -1}, [FEEDBACK], "text", 7]
    seen: set[str] = set()
    for value in values:
        for ensure_ascii in (False, True):
            seen.add(_outcomes_match(value, ensure_ascii))
    assert {"stored", "schema:query", "schema:position", "schema:ts", "unknown_action", "unknown_field",
            "not_object"} <= seen


def test_duplicate_keys_resolve_alike_on_both_paths() -> None:
    raw = json.dumps(FEEDBACK).encode()[:-1] + b', "query": "second", "position": 9}'
    got, want = parse(raw), _strict(raw)
    assert got == want and isinstance(got, Parsed) and (got.row["query"], got.row["position"]) == ("second", 9)


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**31 + 3), st.floats(allow_nan=False),
                       st.text(max_size=8), st.sampled_from([v for v in ODD_VALUES if not isinstance(v, list | dict)]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from([*FEEDBACK, "explore", "ranked_position", "other"]),
                               st.one_of(_JSON_LEAF, st.lists(_JSON_LEAF, max_size=2)), max_size=4),
       dropped=st.sets(st.sampled_from(list(FEEDBACK)), max_size=2), ensure_ascii=st.booleans())
def test_fast_path_matches_feedbackin_on_generated_events(changes: dict[str, Any], dropped: set[str],
                                                          ensure_ascii: bool) -> None:
    value = {k: v for k, v in (FEEDBACK | changes).items() if k not in dropped}
    _outcomes_match(value, ensure_ascii)


def test_a_backslash_before_u0000_is_text_not_a_nul() -> None:
    out = parse(FEEDBACK | {"query": "path\\u0000x"})  # JSON "path\\u0000x": a backslash, then "u0000x"
    assert isinstance(out, Parsed) and out.row["query"] == "path\\u0000x"
    assert rejected(FEEDBACK | {"query": "path\u0000x"}).reason == "schema:query"


# --- timestamps: out of range in UTC, epoch numbers, the far future (#14) ---------------------------------
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                "0001-01-01T00:59:59.999999+01:00"])
@pytest.mark.parametrize("topic", ["fb", "cat"])
def test_a_ts_that_overflows_in_utc_is_rejected_not_raised(ts: str, topic: str) -> None:
    base = FEEDBACK if topic == "fb" else CATALOG
    out = rejected(base | {"ts": ts}, topic)
    assert out.reason == "schema:ts" and "out of range" in out.message


def test_the_extremes_that_do_exist_in_utc_are_accepted() -> None:
    low = parse(FEEDBACK | {"ts": "0001-01-01T00:00:00+00:00"})
    assert isinstance(low, Parsed) and low.row["ts"] == datetime(1, 1, 1, tzinfo=UTC)
    out = parse_record("fb", 0, 0, None, json.dumps(FEEDBACK | {"ts": "9999-12-31T23:59:59+01:00"}).encode(),
                       config=CFG, pseudonymize=KEY, now=NOW)
    assert isinstance(out, Rejection) and out.reason == "future_ts"  # exists, but far ahead


@pytest.mark.parametrize("ts", ["1795000000", "1795000000.5", "-1", "0", " 1795000000", "1795000000Z",
                                "17950000000000"])
def test_epoch_number_strings_are_not_timestamps(ts: str) -> None:
    out = rejected(FEEDBACK | {"ts": ts})
    assert out.reason == "schema:ts" and "ISO-8601" in out.message


def _at(ts: str, *, timestamp_ms: int | None, topic: str = "fb", skew: float = 3600.0) -> Parsed | Rejection:
    config = ParseConfig("fb", "cat", 65536, max_future_skew_s=skew)
    base = FEEDBACK if topic == "fb" else CATALOG
    return parse_record(topic, 0, 5, None, json.dumps(base | {"ts": ts}).encode(), config=config,
                        pseudonymize=KEY, timestamp_ms=timestamp_ms, now=NOW)


@pytest.mark.parametrize("topic", ["fb", "cat"])
def test_a_ts_too_far_ahead_of_the_record_is_rejected(topic: str) -> None:
    broker_ms = int(datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp() * 1000)  # 2 h before `now`
    assert isinstance(_at("2026-11-27T10:59:00Z", timestamp_ms=broker_ms, topic=topic), Parsed)
    far = _at("2026-11-27T11:01:00Z", timestamp_ms=broker_ms, topic=topic)  # 61 min after the broker's time
    assert isinstance(far, Rejection) and far.reason == "future_ts" and "3660s ahead" in far.message
    assert far.value is not None and b"2026-11-27T11:01:00Z" in far.value  # original bytes kept
    # without a broker timestamp (or -1, none), `now` is the reference
    assert isinstance(_at("2026-11-27T12:59:00Z", timestamp_ms=None, topic=topic), Parsed)
    assert isinstance(_at("2026-11-27T13:01:00Z", timestamp_ms=-1, topic=topic), Rejection)
    # a producer's CreateTime in the future does not move the reference past `now`
    future_ms = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert _at("2029-12-31T23:00:00Z", timestamp_ms=future_ms, topic=topic).reason == "future_ts"  # type: ignore[union-attr]


def test_the_skew_is_a_setting_and_old_events_always_pass() -> None:
    assert ParseConfig.from_settings(Settings.load(ingest_max_future_skew_s=5)).max_future_skew_s == 5
    assert isinstance(_at("2026-11-27T12:00:04Z", timestamp_ms=None, skew=5), Parsed)
    assert isinstance(_at("2026-11-27T12:00:06Z", timestamp_ms=None, skew=5), Rejection)
    assert isinstance(_at("2020-01-01T00:00:00Z", timestamp_ms=None, skew=0), Parsed)
