"""Sinks of `ranktune simulate`: a JSONL file or Kafka, with optional pacing; the judgements file.

JSONL lines are `{"topic": str, "key": str | null, "value": str}`; a value that is not valid UTF-8
is written base64-encoded with `"encoding": "base64"` on the line (`read_jsonl` undoes it).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import BrokerUnavailable
from daemon.ingest.kafka_client import client_kwargs
from daemon.settings import Settings

if TYPE_CHECKING:
    from daemon.tools.simulate import SimConfig, SimRecord


def paced(records: Iterable[SimRecord], events_per_s: float | None) -> Iterator[SimRecord]:
    """Pass records through, sleeping so feedback/malformed records leave at `events_per_s`.

    Catalog upserts are not paced. None means as fast as possible.
    """
    if events_per_s is None:
        yield from records
        return
    start, n = time.monotonic(), 0
    for record in records:
        if record.kind != "catalog":
            delay = start + n / events_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            n += 1
        yield record


def topic_of(record: SimRecord, settings: Settings) -> str:
    """The Kafka topic a record belongs to."""
    return settings.kafka.catalog_topic if record.stream == "catalog" else settings.kafka.feedback_topic


def _count(counts: Counter[str], record: SimRecord) -> None:
    counts[record.kind] += 1
    if record.kind == "feedback" and record.payload is not None:
        counts[f"action:{record.payload['action']}"] += 1


def write_jsonl(
    records: Iterable[SimRecord], path: Path, settings: Settings, events_per_s: float | None = None
) -> Counter[str]:
    """Write records as JSONL lines `{"topic", "key", "value"}`; return counts by kind and action."""
    counts: Counter[str] = Counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in paced(records, events_per_s):
            line: dict[str, Any] = {
                "topic": topic_of(record, settings),
                "key": None if record.key is None else record.key.decode("utf-8"),
            }
            try:
                line["value"] = record.value.decode("utf-8")
            except UnicodeDecodeError:
                line["value"] = base64.b64encode(record.value).decode("ascii")
                line["encoding"] = "base64"
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            _count(counts, record)
    return counts


def read_jsonl(path: Path) -> Iterator[tuple[str, bytes | None, bytes]]:
    """Read back a file written by `write_jsonl` as `(topic, key, value)` byte triples."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            key = None if row["key"] is None else row["key"].encode("utf-8")
            raw: str = row["value"]
            value = base64.b64decode(raw) if row.get("encoding") == "base64" else raw.encode("utf-8")
            yield row["topic"], key, value


def produce_kafka(
    records: Iterable[SimRecord],
    settings: Settings,
    bootstrap: str | None = None,
    events_per_s: float | None = None,
) -> Counter[str]:
    """Produce records to Kafka (catalog/feedback topics of `settings`), flush, return counts.

    Raises `BrokerUnavailable` when the broker cannot be reached or a send fails.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    if bootstrap:
        settings = settings.replace(**{"kafka_bootstrap": bootstrap})
    servers = settings.kafka.bootstrap.split(",")
    try:
        producer = KafkaProducer(acks="all", linger_ms=10, **client_kwargs(settings, client_id="ranktune-simulate"))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {','.join(servers)}: {exc}") from exc
    counts: Counter[str] = Counter()
    failures: list[BaseException] = []
    try:
        for record in paced(records, events_per_s):
            future = producer.send(topic_of(record, settings), key=record.key, value=record.value)
            future.add_errback(failures.append)
            _count(counts, record)
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise BrokerUnavailable(f"producing to Kafka at {','.join(servers)} failed: {exc}") from exc
    finally:
        producer.close(timeout=10)
    if failures:
        raise BrokerUnavailable(f"{len(failures)} records were not delivered; first error: {failures[0]}")
    return counts


def summary_line(counts: Counter[str], target: str) -> str:
    """The one-line summary printed at the end of a run."""
    actions = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(counts.items()) if k.startswith("action:"))
    return (
        f"simulate: {counts['catalog']} catalog, {counts['feedback']} feedback"
        f"{f' ({actions})' if actions else ''}, {counts['malformed']} malformed -> {target}"
    )


def write_judgements(cfg: SimConfig, path: Path, n_queries: int = 40, candidates: int = 30) -> int:
    """Write pre- and post-drift judgements as JSON; return the number of queries written.

    File: `{"seed", "n_items", "queries": [...]}`, each query as `eval_judgements` returns it.
    """
    from daemon.tools.simulate import eval_judgements

    queries = [q for phase in ("pre", "post") for q in eval_judgements(cfg, phase, n_queries, candidates)]
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"seed": cfg.seed, "n_items": cfg.n_items, "queries": queries}
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return len(queries)
