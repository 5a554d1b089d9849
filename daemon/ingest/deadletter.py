"""Publishes rejected records to the dead-letter topic.

Each dead letter keeps the original key and value bytes and says where it came from and why in headers:
`source_topic`, `source_partition`, `source_offset`, `reason`, `message`, `ts` (ISO-8601 UTC of the
rejection). Personal identifiers are the one exception: storage keeps only the keyed pseudonym of
`user_id` and `session_id`, and so does the dead-letter topic (`redact_personal`): their values are
replaced by the same pseudonym (JSON `null` without a key) and a `redacted` header names the fields.

Delivery is at-least-once: after a crash or a failed flush the same reject may be published again
(dead letters are diagnostics, not data). A reject the broker refuses for good (a non-retriable
error) is reported by `wait` as dropped, and the ingest loop then stops without committing.

A value too big for the producer's request limit is cut to that limit and marked with a
`truncated` header giving the original size, so one huge message cannot block the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from daemon.ingest.events import Rejection
from daemon.ingest.kafka_client import client_kwargs
from daemon.ingest.pseudonym import Pseudonymizer
from daemon.settings import Settings

log = logging.getLogger(__name__)

# a submitted reject with the future of its send, or the error that stopped the send
Sent = tuple[Rejection, Any]

MAX_REQUEST_BYTES = 1_048_576  # kafka-python's (and Kafka's) default request/message limit
_VALUE_LIMIT = MAX_REQUEST_BYTES - 16 * 1024  # room for key, headers and framing
_KEY_LIMIT = 8 * 1024  # a longer source key is cut (header key_truncated), so value + key + headers fit
_MESSAGE_LIMIT = 1024  # characters of the reason's message kept in its header


PERSONAL_FIELDS = ("user_id", "session_id")
# `"user_id": <string or bare scalar>` in bytes that are not a JSON object (cut off, bad UTF-8)
_PERSONAL_RE = re.compile(rb'"(user_id|session_id)"(\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}\]\s]+)')


def redact_personal(value: bytes | None, pseudonymize: Pseudonymizer) -> tuple[bytes | None, list[str]]:
    """`value` with every `user_id`/`session_id` value replaced by its pseudonym, and the fields replaced.

    A JSON object or array is decoded, changed at any depth and encoded again (compact, UTF-8); other
    bytes are searched for `"user_id": value` pairs, which are replaced in place. Bytes without personal
    fields come back as they are."""
    if value is None or (b"user_id" not in value and b"session_id" not in value):
        return value, []
    try:
        body = json.loads(value)
    except Exception:  # not JSON (cut off, bad UTF-8, nested too deep): redact the raw pairs
        body = None
    if isinstance(body, dict | list):
        seen: set[str] = set()
        _redact_tree(body, pseudonymize, seen)
        if not seen:
            return value, []
        found = [f for f in PERSONAL_FIELDS if f in seen]
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"), found
    fields: list[str] = []

    def _sub(m: re.Match[bytes]) -> bytes:
        field = m.group(1).decode()
        fields.append(field)
        token = m.group(3)
        try:
            raw = json.loads(token) if token.startswith(b'"') else token.decode("utf-8", "replace")
        except ValueError:
            raw = token.decode("utf-8", "replace")
        hashed = pseudonymize(field, _text(raw if isinstance(raw, str) else str(raw)))
        return b'"' + m.group(1) + b'"' + m.group(2) + (json.dumps(hashed).encode())

    out = _PERSONAL_RE.sub(_sub, value)
    return out, sorted(set(fields))


def _redact_tree(node: Any, pseudonymize: Pseudonymizer, seen: set[str]) -> None:
    """Replace, in place, every personal field's value in the objects of `node` at any depth."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for f in PERSONAL_FIELDS:
                if f in item:
                    raw = item[f]
                    item[f] = pseudonymize(f, _text(raw if isinstance(raw, str) else json.dumps(raw)))
                    seen.add(f)
            stack.extend(v for k, v in item.items() if k not in PERSONAL_FIELDS and isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def _text(value: str) -> str:
    """`value` as valid UTF-8 text (JSON may carry lone surrogates); unchanged for any valid string."""
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def headers_for(rej: Rejection, *, truncated_from: int | None = None) -> list[tuple[str, bytes]]:
    headers = [
        ("source_topic", rej.topic.encode()),
        ("source_partition", str(rej.partition).encode()),
        ("source_offset", str(rej.offset).encode()),
        ("reason", rej.reason.encode()),
        ("message", rej.message[:_MESSAGE_LIMIT].encode("utf-8", "replace")),
        ("ts", datetime.now(UTC).isoformat().encode()),
    ]
    if truncated_from is not None:
        headers.append(("truncated", str(truncated_from).encode()))
    return headers


class DeadLetterPublisher:
    """Owns a `KafkaProducer` (built in the constructor, which connects).

    `submit` starts the sends, `wait` blocks until they are acked; `publish` does both.
    """

    def __init__(self, settings: Settings, *, flush_timeout_s: float = 10.0) -> None:
        self.topic = settings.kafka.deadletter_topic
        self._pseudonymize = Pseudonymizer(settings.ingest.pseudonym_key)
        self._flush_timeout_s = flush_timeout_s
        self._producer = KafkaProducer(
            **client_kwargs(settings, client_id="ranktune-deadletter"),
            acks="all",
            linger_ms=5,
            max_block_ms=int(flush_timeout_s * 1000),
            bootstrap_timeout_ms=int(flush_timeout_s * 1000),
            max_request_size=MAX_REQUEST_BYTES,
        )

    def submit(self, rejects: Sequence[Rejection]) -> list[Sent]:
        """Start sending `rejects` without waiting (the caller overlaps this with its database write)."""
        sent: list[Sent] = []
        for i, rej in enumerate(rejects):
            value = rej.value if rej.value is not None or rej.key is not None else b""
            value, redacted = redact_personal(value, self._pseudonymize)
            truncated = None
            if value is not None and len(value) > _VALUE_LIMIT:
                truncated, value = len(value), value[:_VALUE_LIMIT]
            headers = headers_for(rej, truncated_from=truncated)
            key = rej.key
            if key is not None and len(key) > _KEY_LIMIT:  # else key + value could pass the request limit
                headers.append(("key_truncated", str(len(key)).encode()))
                key = key[:_KEY_LIMIT]
            if redacted:
                headers.append(("redacted", ",".join(redacted).encode()))
            try:
                fut = self._producer.send(self.topic, value=value, key=key, headers=headers)
            except KafkaTimeoutError as exc:  # no metadata for the topic: the broker is away, try later
                sent.extend((r, exc) for r in rejects[i:])
                break
            except KafkaError as exc:
                sent.append((rej, exc))
                continue
            sent.append((rej, fut))
        return sent

    def wait(self, sent: Sequence[Sent]) -> tuple[list[Rejection], list[Rejection]]:
        """Wait for the acks of `submit`ted rejects.

        Returns `(retry, dropped)`: rejects that failed with a retriable error or were not acked in
        time (submit them again later; the offsets must not be committed meanwhile), and rejects that
        can never be published (logged here). Never raises for broker trouble.
        """
        retry: list[Rejection] = []
        dropped: list[Rejection] = []
        if any(not isinstance(f, BaseException) and not f.is_done for _, f in sent):
            with contextlib.suppress(KafkaTimeoutError):  # the unfinished ones are retried
                self._producer.flush(timeout=self._flush_timeout_s)
        for rej, fut in sent:
            if isinstance(fut, BaseException):
                exc: Any = fut
                retriable = bool(getattr(fut, "retriable", False))
            elif fut.succeeded():
                continue
            else:
                exc, retriable = fut.exception, not fut.is_done or fut.retriable()
            if retriable:
                retry.append(rej)
            else:
                log.error("%s: cannot dead-letter (%s): %s", rej.where, rej.reason, exc)
                dropped.append(rej)
        return retry, dropped

    def publish(self, rejects: Sequence[Rejection]) -> tuple[list[Rejection], list[Rejection]]:
        """`submit` then `wait`."""
        return self.wait(self.submit(rejects))

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.close(timeout=timeout_s)
