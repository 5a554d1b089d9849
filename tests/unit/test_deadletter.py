"""Dead letters keep personal identifiers only as the pseudonym that storage keeps (#14)."""

from __future__ import annotations

import json
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from daemon.ingest.deadletter import redact_personal
from daemon.ingest.events import ParseConfig, Parsed, parse_record
from daemon.ingest.pseudonym import Pseudonymizer

KEY = Pseudonymizer("dl-key")
FEEDBACK = {"event_id": "e-1", "ts": "2026-11-01T13:00:00+01:00", "query": "red shoe", "item_id": "sku-42",
            "action": "click", "user_id": "u-7", "session_id": "s-77"}


def _stored_hashes(payload: dict[str, str]) -> tuple[str, str]:
    out = parse_record("fb", 0, 0, None, json.dumps(payload).encode(), config=ParseConfig("fb", "cat", 65536),
                       pseudonymize=KEY)
    assert isinstance(out, Parsed)
    return out.row["user_hash"], out.row["session_hash"]


def test_a_json_reject_carries_the_same_pseudonyms_as_storage() -> None:
    user_hash, session_hash = _stored_hashes(FEEDBACK)
    bad = json.dumps(FEEDBACK | {"action": "hover"}).encode()  # rejected: unknown_action
    value, fields = redact_personal(bad, KEY)
    assert fields == ["user_id", "session_id"] and value is not None
    body = json.loads(value)
    assert (body["user_id"], body["session_id"]) == (user_hash, session_hash)
    assert body == FEEDBACK | {"action": "hover", "user_id": user_hash, "session_id": session_hash}
    assert b"u-7" not in value and b"s-77" not in value


def test_without_a_key_the_ids_are_dropped() -> None:
    value, fields = redact_personal(json.dumps(FEEDBACK).encode(), Pseudonymizer(None))
    assert fields == ["user_id", "session_id"] and value is not None
    assert json.loads(value)["user_id"] is None and b"u-7" not in value


def test_cut_off_or_non_utf8_bytes_are_redacted_in_place() -> None:
    user_hash, session_hash = _stored_hashes(FEEDBACK)
    text = json.dumps(FEEDBACK).encode()
    cut = text[: text.index(b"s-77") + 2]  # ends inside the session id
    value, fields = redact_personal(cut, KEY)
    assert fields == ["session_id", "user_id"] and value is not None
    assert value.startswith(text[: text.index(b'"user_id"')])  # everything before is unchanged
    assert user_hash.encode() in value and b"u-7" not in value and b"s-7" not in value
    broken = text.replace(b"red shoe", b"red \xff shoe")
    value, _ = redact_personal(broken, KEY)
    assert value is not None and b"\xff" in value and user_hash.encode() in value and session_hash.encode() in value
    value, _ = redact_personal(b'{"user_id": 12345, "x": [', KEY)
    assert value is not None and b"12345" not in value


def test_nested_ids_and_arrays_of_events_are_redacted_at_any_depth() -> None:
    user_hash, session_hash = _stored_hashes(FEEDBACK)
    nested = {"meta": {"user_id": "u-7", "list": [{"session_id": "s-77"}]}, "query": "red shoe"}
    value, fields = redact_personal(json.dumps(nested).encode(), KEY)
    assert fields == ["user_id", "session_id"] and value is not None
    assert json.loads(value) == {"meta": {"user_id": user_hash, "list": [{"session_id": session_hash}]},
                                 "query": "red shoe"}
    value, fields = redact_personal(json.dumps([FEEDBACK, {"user_id": "u-7"}]).encode(), KEY)
    assert fields == ["user_id", "session_id"] and value is not None
    body = json.loads(value)
    assert body[0]["user_id"] == body[1]["user_id"] == user_hash and body[0]["session_id"] == session_hash
    assert b"u-7" not in value and b"s-77" not in value


def test_bytes_without_personal_fields_are_unchanged() -> None:
    for raw in (b'{"a": 1,  "b": "x"}', b"\xff\xfe", b"", None, b'{"user":"u-7"}'):
        assert redact_personal(raw, KEY) == (raw, [])


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=40), uid=st.text(min_size=1, max_size=20).filter(lambda u: len(u.strip()) > 3),
       suffix=st.binary(max_size=40), quoted=st.booleans())
def test_any_bytes_around_a_user_id_never_raise_and_never_keep_it(prefix: bytes, uid: str, suffix: bytes,
                                                                  quoted: bool) -> None:
    if not quoted:  # a bare (invalid JSON) id is a token up to the next separator
        assume(re.fullmatch(r"[A-Za-z0-9_.+-]+", uid) is not None)
    token = json.dumps(uid).encode() if quoted else uid.encode()
    raw = prefix + b'{"user_id":' + token + b"," + suffix
    value, fields = redact_personal(raw, KEY)
    assert value is not None and "user_id" in fields
    if len(token) > 6 and token not in prefix + suffix:
        assert token not in value
