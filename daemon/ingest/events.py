"""The strict event schema and `parse_record`: raw Kafka bytes in, a storable row or a rejection out.

One JSON object per Kafka message. The feedback topic carries `FeedbackIn`, the catalog topic
`CatalogIn`. The schema is strict on purpose: wrong JSON types are not coerced (`"3"` is not a
position), timestamps must be ISO-8601 strings with a zone, and unknown fields are rejected
(`unknown_field`) rather than silently dropped, so a producer that renames a field finds out from
the dead-letter topic instead of losing data. Strings may not contain NUL and attribute numbers
must be finite: PostgreSQL refuses both, and one such row would otherwise block a whole batch.

Per-message failures are values, not exceptions: `parse_record` returns a `Rejection` carrying the
original bytes and a low-cardinality reason code (safe as a metric label):

| reason           | meaning                                                        |
|------------------|----------------------------------------------------------------|
| `too_large`      | message over `max_message_bytes`                               |
| `bad_utf8`       | value is not valid UTF-8                                       |
| `not_json`       | value is not JSON (or is a null/tombstone value)               |
| `not_object`     | value is JSON but not an object                                |
| `unknown_field`  | an unexpected field (the message names it)                     |
| `unknown_action` | `action` is not one of the four actions                        |
| `schema:<field>` | a known field is missing, mistyped, out of range or naive-time |
| `future_ts`      | `ts` more than `max_future_skew_s` ahead of the record's time  |
| `unknown_topic`  | record from a topic that carries no ranktune events            |
| `parse_error`    | the parser itself failed (a bug; the loop goes on, see consumer) |
| `store_failed`   | the database refused the row although it passed the schema    |

Timestamps: `ts` must be an ISO-8601 string with a zone (an epoch number, even as a string, is refused)
whose UTC conversion exists (`0001-01-01T00:00:00+01:00` has none). It may not lie more than
`max_future_skew_s` ahead of the record's own time, `min(broker timestamp, now)`: a producer-chosen
far-future `ts` would otherwise decide the holdout split (feedback) or freeze an item (catalog, where
a later `ts` wins). The broker timestamp is the producer's CreateTime on most topics, hence the `min`.

Personal data (`user_id`, `session_id`) leaves this module only as a keyed hash, and rejection
messages never quote values.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    ValidationError,
)

from daemon.ingest.pseudonym import Pseudonymizer
from daemon.settings import Settings

Action = Literal["impression", "click", "add_to_cart", "purchase"]
ACTIONS: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase")
INT32_MAX = 2**31 - 1


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


def _storable_json(v: Any) -> Any:
    """Attributes must survive a round trip through PostgreSQL JSON: no NUL, no NaN/Infinity."""
    if isinstance(v, str):
        _no_nul(v)
    elif isinstance(v, float) and not math.isfinite(v):
        raise ValueError("numbers must be finite")
    elif isinstance(v, dict):
        for k, item in v.items():
            _no_nul(k)
            _storable_json(item)
    elif isinstance(v, list):
        for item in v:
            _storable_json(item)
    return v


_ISO_DATE_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]", re.ASCII)


def _iso_string(v: Any) -> Any:
    """Only an ISO-8601 date-time string (or a datetime from Python): pydantic would also read
    `1795000000` and `"1795000000"` as epoch times. The field is parsed in lax mode after this check,
    because a strict datetime accepts a string only straight from JSON, not from a validator."""
    if isinstance(v, datetime):
        return v
    if not isinstance(v, str) or not _ISO_DATE_START.match(v):
        raise ValueError("must be an ISO-8601 date-time string (YYYY-MM-DDTHH:MM:SS+zone), not an epoch number")
    return v


Timestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_iso_string)]
"""An aware date-time from an ISO-8601 string. `parse_record` converts it to UTC, and rejects one whose
conversion leaves years 1..9999 (`0001-01-01T00:00:00+01:00`) as `schema:ts`."""

Text = Annotated[str, AfterValidator(_no_nul)]
Id = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_no_nul)]
PersonalId = Annotated[str, Field(min_length=1, max_length=256)]  # hashed, never stored raw


class _StrictEvent(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class FeedbackIn(_StrictEvent):
    """One user interaction with a ranked item.

    Example: `{"event_id": "e-1", "ts": "2026-11-01T12:00:00Z", "query": "red running shoe",
    "item_id": "sku-42", "action": "click", "position": 3, "request_id": "r-9", "user_id": "u-7"}`

    On a page the scorer explored (its response said `explore: true`), send `explore: true` and each item's
    `ranked_position` (its response `rank` - 1): those pages estimate the position bias from interventions.
    """

    event_id: Id
    ts: Timestamp
    query: Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_no_nul)]
    item_id: Id
    action: Action
    item_text: Text | None = None
    position: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    request_id: Id | None = None
    session_id: PersonalId | None = None
    user_id: PersonalId | None = None
    explore: bool | None = None  # the page's order was perturbed on purpose (an explored /v1/score response)
    ranked_position: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None  # the model's rank - 1 (0-based)


class CatalogIn(_StrictEvent):
    """A catalog upsert; a later `ts` replaces an earlier one.

    Example: `{"item_id": "sku-42", "title": "Trail shoe", "brand": "Acme", "category": "shoes",
    "attributes": {"color": "red", "sizes": [41, 42]}, "ts": "2026-11-01T12:00:00+01:00"}`
    """

    item_id: Id
    title: Annotated[str, Field(min_length=1), AfterValidator(_no_nul)]
    description: Text | None = None
    category: Name | None = None
    brand: Name | None = None
    attributes: Annotated[dict[str, JsonValue], AfterValidator(_storable_json)] = Field(default_factory=dict)
    ts: Timestamp


_WireId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_WirePersonal = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_WireCount = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]


class _FeedbackWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The fast path of `FeedbackIn`: the same fields and limits, decoded and checked by msgspec (C) in one
    call instead of pydantic plus its Python callbacks (NUL checks, the ISO-string check).

    Only a value that this struct accepts *and* whose `ts` matches `_WIRE_TS` is stored from here; anything
    else (a reject, a NUL escape, another ISO-8601 spelling of `ts`) is validated again by `FeedbackIn`,
    which decides and gives the rejection. So the fast path may refuse what `FeedbackIn` accepts, never the
    reverse, and the rows it builds are `FeedbackIn`'s (tests/unit/test_events.py checks both, field by
    field and on generated values). `ts` stays a string here: `_fast_feedback` reads it with
    `datetime.fromisoformat` once the pattern has matched."""

    event_id: _WireId
    ts: str
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    item_id: _WireId
    action: Action
    item_text: str | None = None
    position: _WireCount | None = None
    request_id: _WireId | None = None
    session_id: _WirePersonal | None = None
    user_id: _WirePersonal | None = None
    explore: bool | None = None
    ranked_position: _WireCount | None = None


# The one `ts` spelling the fast path reads itself: date, 'T', seconds, at most 6 fraction digits, a zone.
_WIRE_TS = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-5][0-9])\Z", re.ASCII)
"""The one spelling of `ts` the fast path reads. The zone's minutes are checked here: `fromisoformat` adds
`+00:60` as an hour where `FeedbackIn` refuses it."""


@dataclass(frozen=True, slots=True)
class ParseConfig:
    """What `parse_record` needs from the settings (topics and the size limit)."""

    feedback_topic: str
    catalog_topic: str
    max_message_bytes: int
    max_future_skew_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ParseConfig:
        return cls(settings.kafka.feedback_topic, settings.kafka.catalog_topic, settings.ingest.max_message_bytes,
                   settings.ingest.max_future_skew_s)


class Parsed(NamedTuple):
    """A valid event as a storage row (`ingested_at`/`updated_at` are set at write time).

    A named tuple rather than a frozen dataclass: as immutable, and one is built per record
    (a frozen dataclass's `__init__` costs about three times as much)."""

    kind: Literal["feedback", "catalog"]
    row: dict[str, Any]
    topic: str
    partition: int
    offset: int
    key: bytes | None = None  # the original bytes, kept for a dead letter if the database refuses the row
    value: bytes | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that will not be stored: where it came from, its original bytes and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    message: str

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def parse_record(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, *,
                 config: ParseConfig, pseudonymize: Pseudonymizer, timestamp_ms: int | None = None,
                 now: float | None = None, not_after: datetime | None = None) -> Parsed | Rejection:
    """Validate one raw record. Never raises for bad input: returns a `Rejection` instead.

    `timestamp_ms`: the record's Kafka timestamp (None or negative: unknown); `now`: Unix seconds (default
    `time.time()`; a batch passes one for all its records). `ts` may be at most `max_future_skew_s` ahead
    of `min(timestamp_ms / 1000, now)`; `not_after` (a batch's `future_limit`) is a bound no later than
    that, below which the exact check is skipped."""
    # The hot path of ingestion (once per record): no per-call closures, the validators called directly,
    # the row built in one dict display.
    validate: Callable[[bytes], FeedbackIn | CatalogIn]
    if topic == config.feedback_topic:
        validate = _validate_feedback
    elif topic == config.catalog_topic:
        validate = _validate_catalog
    else:
        return Rejection(topic, partition, offset, key, value, "unknown_topic",
                         f"topic {topic!r} carries no ranktune events")
    fast = (_fast_feedback(value) if validate is _validate_feedback and value is not None
            and len(value) <= config.max_message_bytes else None)
    event: _FeedbackWire | FeedbackIn | CatalogIn
    if fast is not None:  # UTF-8 and the whole schema checked in C
        event, when = fast
    else:  # the pydantic model decides, and words any rejection
        raw_reason = _raw_rejection(value, config.max_message_bytes)
        if raw_reason is not None:
            return Rejection(topic, partition, offset, key, value, *raw_reason)
        assert value is not None
        try:
            event = validate(value)
        except ValidationError as exc:
            return Rejection(topic, partition, offset, key, value, *_describe(exc))
        when = event.ts
    ts = _checked_ts(when, config, timestamp_ms, now, not_after)
    if type(ts) is tuple:
        return Rejection(topic, partition, offset, key, value, *ts)
    if not isinstance(event, CatalogIn):
        row = _feedback_row(event, ts, topic, partition, offset, pseudonymize)
        return Parsed("feedback", row, topic, partition, offset, key, value)
    row = {"item_id": event.item_id, "title": event.title, "description": event.description,
           "category": event.category, "brand": event.brand, "attributes": event.attributes, "ts": ts}
    return Parsed("catalog", row, topic, partition, offset, key, value)


def _raw_rejection(value: bytes | None, max_bytes: int) -> tuple[str, str] | None:
    """(reason, message) when the bytes themselves are unusable: a tombstone, too large, not UTF-8."""
    if value is None:
        return "not_json", "null value (tombstone)"
    if len(value) > max_bytes:
        return "too_large", f"{len(value)} bytes > max_message_bytes {max_bytes}"
    try:
        value.decode("utf-8")  # checked here for its own reason; the validator then parses the same bytes
    except UnicodeDecodeError as exc:
        return "bad_utf8", f"invalid UTF-8 at byte {exc.start}"
    return None


def _feedback_row(event: _FeedbackWire | FeedbackIn, ts: datetime, topic: str, partition: int, offset: int,
                  pseudonymize: Pseudonymizer) -> dict[str, Any]:
    session_id, user_id = event.session_id, event.user_id
    row = {
        "event_id": event.event_id,
        "ts": ts,
        "query": event.query,
        "item_id": event.item_id,
        "action": event.action,
        "item_text": event.item_text,
        "position": event.position,
        "request_id": event.request_id,
        "session_hash": None if session_id is None else pseudonymize("session_id", session_id),
        "user_hash": None if user_id is None else pseudonymize("user_id", user_id),
        "explore": event.explore,
        "ranked_position": event.ranked_position,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }
    return row


def future_limit(config: ParseConfig, timestamps_ms: Iterable[int | None], now: float) -> datetime:
    """The latest `ts` that no record with one of `timestamps_ms` (None or negative: none, as kafka-python
    gives for message format v0) can refuse as future_ts: a batch computes it once and passes it to
    `parse_record` as `not_after`."""
    known = [t for t in timestamps_ms if t is not None and t >= 0]
    reference = min(now, min(known) / 1000) if known else now
    return datetime.fromtimestamp(reference + config.max_future_skew_s, UTC)


def _checked_ts(ts: datetime, config: ParseConfig, timestamp_ms: int | None, now: float | None,
                not_after: datetime | None) -> Any:
    """`ts` in UTC, or the (reason, message) of its rejection: out of range in UTC, or too far ahead."""
    try:
        ts = ts.astimezone(UTC)
    except OverflowError:
        return "schema:ts", "ts: out of range once converted to UTC"
    if not_after is None or ts > not_after:
        if now is None:
            now = time.time()
        reference = now if timestamp_ms is None or timestamp_ms < 0 else min(now, timestamp_ms / 1000)
        ahead = ts.timestamp() - reference
        if ahead > config.max_future_skew_s:
            return "future_ts", (f"ts is {ahead:.0f}s ahead of the record's time "
                                 f"(max_future_skew_s {config.max_future_skew_s:g})")
    return ts


# `Model.model_validate_json` without its per-call Python wrapper (same validator, same errors).
# Bytes go in directly: pydantic-core parses the JSON itself, and UTF-8 was checked just before.
_validate_feedback: Callable[[bytes], FeedbackIn] = FeedbackIn.__pydantic_validator__.validate_json
_validate_catalog: Callable[[bytes], CatalogIn] = CatalogIn.__pydantic_validator__.validate_json
_NUL_ESCAPE = b"\\u0000"  # how JSON spells a NUL character (raw control bytes are invalid JSON)
_decode_feedback_wire: Callable[[bytes], _FeedbackWire] = msgspec.json.Decoder(_FeedbackWire).decode


def _fast_feedback(value: bytes) -> tuple[_FeedbackWire, datetime] | None:
    """The event and its `ts` when the fast path can decide that `FeedbackIn` accepts `value` (see
    `_FeedbackWire`), else None. A JSON NUL escape always goes to `FeedbackIn`, which refuses NUL."""
    if _NUL_ESCAPE in value:
        return None
    try:
        event = _decode_feedback_wire(value)
    except msgspec.MsgspecError:
        return None
    if _WIRE_TS.match(event.ts) is None:
        return None
    try:
        return event, datetime.fromisoformat(event.ts)
    except ValueError:  # e.g. February 30th: FeedbackIn gives the rejection
        return None


def _describe(exc: ValidationError) -> tuple[str, str]:
    """(reason, message) of the first error; messages name fields, never values."""
    err = exc.errors(include_url=False, include_input=False)[0]
    kind, loc = err["type"], err["loc"]
    path = ".".join(str(p) for p in loc)
    if kind == "json_invalid":
        return "not_json", err["msg"]
    if not loc:
        return "not_object", err["msg"]
    if kind == "extra_forbidden":
        return "unknown_field", f"unexpected field {path[:64]!r}"
    if loc[0] == "action" and kind == "literal_error":
        return "unknown_action", f"action must be one of {', '.join(ACTIONS)}"
    return f"schema:{loc[0]}", f"{path}: {err['msg']}"
