"""Malformed feedback records for `ranktune simulate --malformed-rate`: each one must be rejected.

Every kind breaks the feedback schema in one way: not JSON, invalid UTF-8, an unknown action, a
wrong type, a missing `event_id`, a message over 64 KiB, a time stamp without zone, one that overflows
in UTC or is an epoch-number string, one far in the future, a negative position, an empty query, or a
JSON value that is not an object.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

OVERSIZE_BYTES = 70 * 1024  # over the default 64 KiB message limit

_Maker = Callable[[dict[str, Any], random.Random], bytes]


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _not_json(p: dict[str, Any], rng: random.Random) -> bytes:
    text = _dump(p)
    return text[: rng.randrange(1, len(text) - 1)]  # a truncated object never parses


def _bad_utf8(p: dict[str, Any], rng: random.Random) -> bytes:
    text = _dump(p)
    i = text.index(b'"query":"') + len(b'"query":"')
    return text[:i] + rng.choice([b"\xff\xfe", b"\xc3\x28", b"\x80"]) + text[i:]


def _unknown_action(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({**p, "action": rng.choice(["hover", "CLICK", "like", "view", ""])})


def _wrong_type(p: dict[str, Any], rng: random.Random) -> bytes:
    field, value = rng.choice(
        [
            ("position", str(p["position"])),
            ("position", float(p["position"]) + 0.5),
            ("query", 12345),
            ("item_id", ["a", "b"]),
            ("event_id", 987654321),
            ("ts", 1795000000),
        ]
    )
    return _dump({**p, field: value})


def _missing_event_id(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({k: v for k, v in p.items() if k != "event_id"})


def _oversize(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({**p, "item_text": "x" * OVERSIZE_BYTES})


def _naive_ts(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({**p, "ts": p["ts"][:26]})  # "YYYY-MM-DDTHH:MM:SS.ffffff" without the zone


def _bad_ts(p: dict[str, Any], rng: random.Random) -> bytes:
    # valid ISO-8601 whose UTC conversion overflows, or an epoch number written as a string
    return _dump({**p, "ts": rng.choice(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1795000000"])})


def _future_ts(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({**p, "ts": f"{rng.randrange(2100, 9000)}-01-01T00:00:00Z"})


def _negative_position(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({**p, "position": -rng.randrange(1, 10)})


def _empty_query(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump({**p, "query": ""})


def _not_object(p: dict[str, Any], rng: random.Random) -> bytes:
    return _dump(rng.choice([[p], "click", None, 42]))


MALFORMED_KINDS: dict[str, _Maker] = {
    "not_json": _not_json,
    "bad_utf8": _bad_utf8,
    "unknown_action": _unknown_action,
    "wrong_type": _wrong_type,
    "missing_event_id": _missing_event_id,
    "oversize": _oversize,
    "naive_ts": _naive_ts,
    "bad_ts": _bad_ts,
    "future_ts": _future_ts,
    "negative_position": _negative_position,
    "empty_query": _empty_query,
    "not_object": _not_object,
}


def malformed_value(base: dict[str, Any], rng: random.Random, event_id: str) -> tuple[str, bytes]:
    """A broken feedback message derived from the valid payload `base`: `(defect kind, value bytes)`.

    The copy gets its own `event_id` so that no malformed record shares one with a valid event.
    """
    kind = rng.choice(sorted(MALFORMED_KINDS))
    payload = {**base, "event_id": event_id}
    return kind, MALFORMED_KINDS[kind](payload, rng)
