"""Publishes rejected records to the dead-letter topic.

Each dead letter keeps the original key and value bytes unchanged and says where it came from and
why in headers: `source_topic`, `source_partition`, `source_offset`, `reason`, `message`, `ts`
(ISO-8601 UTC of the rejection). Delivery is at-least-once: after a crash or a failed flush the
same reject may be published again (dead letters are diagnostics, not data).

A value too big for the producer's request limit is cut to that limit and marked with a
`truncated` header giving the original size, so one huge message cannot block the loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from daemon.ingest.events import Rejection
from daemon.ingest.kafka_client import client_kwargs
from daemon.settings import Settings

log = logging.getLogger(__name__)

# a submitted reject with the future of its send, or the error that stopped the send
Sent = tuple[Rejection, Any]

MAX_REQUEST_BYTES = 1_048_576  # kafka-python's (and Kafka's) default request/message limit
_VALUE_LIMIT = MAX_REQUEST_BYTES - 16 * 1024  # room for key, headers and framing


def headers_for(rej: Rejection, *, truncated_from: int | None = None) -> list[tuple[str, bytes]]:
    headers = [
        ("source_topic", rej.topic.encode()),
        ("source_partition", str(rej.partition).encode()),
        ("source_offset", str(rej.offset).encode()),
        ("reason", rej.reason.encode()),
        ("message", rej.message.encode("utf-8", "replace")),
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
            truncated = None
            if value is not None and len(value) > _VALUE_LIMIT:
                truncated, value = len(value), value[:_VALUE_LIMIT]
            try:
                fut = self._producer.send(
                    self.topic, value=value, key=rej.key, headers=headers_for(rej, truncated_from=truncated)
                )
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
