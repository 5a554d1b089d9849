"""#14: the control-topic listener survives any message: a tombstone, JSON nested too deeply, a bad version
name. Each is logged and skipped; a good notice after them is still acted on."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.serving.control import ControlListener, ControlMessage
from daemon.settings import Settings

SETTINGS = Settings.load(kafka_bootstrap="127.0.0.1:9")
POISON: list[bytes | None] = [
    None,  # a tombstone
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion limit
    b'{"action": "promote", "version": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"action": "promote", "version": "v0001\\n"}',
    b'{"action": "promote", "version": "v\\u0661\\u0662\\u0663\\u0664"}',
    b"\xff\xfe", b"", b"null", b"42", b'{"action": null}', b'{"action": "promote", "version": 7}',
]


Listener = tuple[ControlListener, list[ControlMessage]]


@pytest.fixture
def listener() -> Listener:
    seen: list[ControlMessage] = []
    return ControlListener(SETTINGS, seen.append, group_id="g"), seen


@pytest.mark.parametrize("raw", POISON, ids=range(len(POISON)))
def test_a_poison_control_message_is_logged_and_skipped(listener: Listener, raw: bytes | None,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    ctl, seen = listener
    with caplog.at_level(logging.WARNING, logger="daemon.serving.control"):
        ctl._handle("ctl", 0, 3, raw)
    assert seen == []
    assert any("ignoring malformed control message ctl[0]@3" in r.getMessage() for r in caplog.records)
    ctl._handle("ctl", 0, 4, b'{"action": "promote", "version": "v0002"}')
    assert [(m.action, m.version) for m in seen] == [("promote", "v0002")]


@pytest.mark.parametrize("raw", POISON, ids=range(len(POISON)))
def test_from_bytes_raises_only_value_error(raw: bytes | None) -> None:
    with pytest.raises(ValueError):
        ControlMessage.from_bytes(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.none())
def test_any_bytes_never_end_the_listener(raw: bytes | None) -> None:
    seen: list[ControlMessage] = []
    ControlListener(SETTINGS, seen.append, group_id="g")._handle("c", 0, 0, raw)
    assert all(m.action in ("promote", "rollback") for m in seen)
