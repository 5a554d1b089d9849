"""Property tests of the event parser (#14, fuzzing): any bytes on either topic give a stored row or a
rejection with a reason, never an exception.

Three generators: raw bytes; JSON objects shaped like events whose fields take arbitrary JSON values;
valid events whose `ts` is any aware date-time (years 1..9999, any offset) or any text. Every `Parsed`
is written through the real writer into SQLite: it must be stored (or a duplicate), or come back as a
`store_failed` rejection, which the ingest loop dead-letters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from daemon.ingest.events import ParseConfig, Parsed, Rejection, future_limit, parse_record
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.ingest.writer import write_batch
from storage.db import make_engine, upgrade

CFG = ParseConfig(feedback_topic="fb", catalog_topic="cat", max_message_bytes=4096)
KEY = Pseudonymizer("fuzz-key")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()
REASON = re.compile(r"\A(too_large|bad_utf8|not_json|not_object|unknown_field|unknown_action|future_ts|"
                    r"schema:[a-z_]+)\Z")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FEEDBACK: dict[str, Any] = {"event_id": "e-1", "ts": "2026-11-01T13:00:00+01:00", "query": "red shoe",
                            "item_id": "sku-42", "action": "click", "position": 3, "user_id": "u-7"}
CATALOG: dict[str, Any] = {"item_id": "sku-42", "title": "Trail shoe", "attributes": {"color": "red"},
                           "ts": "2026-11-01T12:00:00Z"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60 - 59, 23 * 60 + 59))
aware = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                     timezones=offsets)
timestamps = aware.map(lambda d: d.isoformat()) | st.text(max_size=40) | st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2}|Z)?\Z")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'fuzz.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def _check(engine: Engine, topic: str, value: bytes | None, timestamp_ms: int | None = None) -> Parsed | Rejection:
    out = parse_record(topic, 1, 9, b"k", value, config=CFG, pseudonymize=KEY, timestamp_ms=timestamp_ms, now=NOW)
    if isinstance(out, Rejection):
        assert REASON.match(out.reason), out.reason
        assert out.message and out.value == value and out.where == f"{topic}[1]@9"
        return out
    assert isinstance(out, Parsed) and out.kind == ("feedback" if topic == "fb" else "catalog")
    ts = out.row["ts"]
    assert ts.utcoffset() == timedelta(0) and ts.timestamp() <= NOW + CFG.max_future_skew_s
    written = write_batch(engine, [out])
    if written.refused:
        assert [r.reason for r in written.refused] == ["store_failed"]
    else:
        assert written.stored + written.duplicates == 1
    return out


@FUZZ
@given(topic=st.sampled_from(["fb", "cat"]), value=st.binary(max_size=600) | st.none())
def test_any_bytes_give_a_row_or_a_rejection(engine: Engine, topic: str, value: bytes | None) -> None:
    _check(engine, topic, value)


@FUZZ
@given(topic=st.sampled_from(["fb", "cat"]), changes=st.dictionaries(
    st.sampled_from(sorted(set(FEEDBACK) | set(CATALOG) | {"extra", "item_text", "brand"})), json_values, max_size=4))
def test_event_shaped_objects_with_any_field_values(engine: Engine, topic: str, changes: dict[str, Any]) -> None:
    base = FEEDBACK if topic == "fb" else CATALOG
    value = json.dumps(base | changes, allow_nan=True).encode()
    _check(engine, topic, value)


@FUZZ
@given(topic=st.sampled_from(["fb", "cat"]), ts=timestamps,
       timestamp_ms=st.none() | st.integers(-1, 2**53))
def test_any_timestamp_is_stored_in_utc_or_rejected(engine: Engine, topic: str, ts: str,
                                                     timestamp_ms: int | None) -> None:
    base, id_field = (FEEDBACK, "event_id") if topic == "fb" else (CATALOG, "item_id")
    out = _check(engine, topic, json.dumps(base | {id_field: f"t-{ts}"[:128], "ts": ts}).encode(), timestamp_ms)
    if isinstance(out, Rejection):
        assert out.reason in ("schema:ts", "future_ts", f"schema:{id_field}"), out


def test_the_audits_poison_timestamps_are_rejected_by_the_same_check(engine: Engine) -> None:
    for ts in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1795000000"):
        out = _check(engine, "fb", json.dumps(FEEDBACK | {"ts": ts}).encode())
        assert isinstance(out, Rejection) and out.reason == "schema:ts"


@FUZZ
@given(ts=aware, batch=st.lists(st.none() | st.integers(-1, 2**42), min_size=1, max_size=5), pick=st.integers(0, 4),
       skew=st.floats(0, 86400 * 30))
def test_the_batch_fast_path_decides_exactly_as_the_exact_check(ts: datetime, batch: list[int | None], pick: int,
                                                               skew: float) -> None:  # None: format v0
    config = ParseConfig("fb", "cat", 4096, max_future_skew_s=skew)
    value = json.dumps(FEEDBACK | {"ts": ts.isoformat()}).encode()
    record_ms = batch[pick % len(batch)]
    exact = parse_record("fb", 0, 0, None, value, config=config, pseudonymize=KEY, timestamp_ms=record_ms, now=NOW)
    fast = parse_record("fb", 0, 0, None, value, config=config, pseudonymize=KEY, timestamp_ms=record_ms, now=NOW,
                        not_after=future_limit(config, batch, NOW))
    assert type(fast) is type(exact)
    assert getattr(fast, "reason", None) == getattr(exact, "reason", None)
