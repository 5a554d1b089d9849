"""kafka-python connection options from the settings, and topic creation.

`client_kwargs` is the one place Kafka security settings (SASL_SSL, SCRAM, CA file) become
kafka-python arguments; producer, consumer and admin clients all start from it. Its result holds
the SASL password in clear, so log only `redacted(kwargs)`. (kafka-python itself logs its
configuration at DEBUG; `daemon.cli.configure_logging` keeps the `kafka` logger at WARNING or above.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from daemon.errors import BrokerUnavailable
from daemon.settings import Settings

log = logging.getLogger(__name__)

_SECRET_KEYS = frozenset({"sasl_plain_password", "ssl_password"})

# CreateTopics error codes that mean "the topic is there, or we may not create it"
_EXISTS = 36  # TOPIC_ALREADY_EXISTS
_FORBIDDEN = {29: "topic authorization failed", 31: "cluster authorization failed", 44: "policy violation"}


def client_kwargs(settings: Settings, *, client_id: str | None = None) -> dict[str, Any]:
    """Connection and security arguments shared by `KafkaProducer`, `KafkaConsumer`, `KafkaAdminClient`."""
    kw: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka.bootstrap.split(",") if s.strip()],
        "security_protocol": settings.kafka.security_protocol,
    }
    if client_id:
        kw["client_id"] = client_id
    if settings.kafka.security_protocol.startswith("SASL"):
        assert settings.kafka.sasl_password is not None  # Settings checks SASL_* has all three
        kw["sasl_mechanism"] = settings.kafka.sasl_mechanism
        kw["sasl_plain_username"] = settings.kafka.sasl_username  # kafka-python uses it for SCRAM too
        kw["sasl_plain_password"] = settings.kafka.sasl_password.get_secret_value()
    if settings.kafka.security_protocol.endswith("SSL") and settings.kafka.ssl_cafile is not None:
        kw["ssl_cafile"] = str(settings.kafka.ssl_cafile)
    return kw


def redacted(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` fit for a log line: secrets masked."""
    return {k: ("***" if k in _SECRET_KEYS and v is not None else v) for k, v in kwargs.items()}


def ensure_topics(settings: Settings, topics: Iterable[str], *, timeout_ms: int = 10000) -> dict[str, str]:
    """Create the missing `topics` with `kafka_topic_partitions` partitions.

    Tolerates topics that already exist (also when another replica creates them at the same time)
    and brokers that forbid creation (ACLs, policies): those are logged and left to the operator.
    Returns `{topic: "exists" | "created" | "forbidden: ..." | "failed: ..."}`.
    Raises `BrokerUnavailable` when no broker answers.
    """
    wanted = list(dict.fromkeys(topics))
    try:
        admin = KafkaAdminClient(
            **client_kwargs(settings, client_id="ranktune-admin"),
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.kafka.bootstrap}: {exc}") from exc
    try:
        status = {t: "exists" for t in admin.list_topics() if t in wanted}
        missing = [t for t in wanted if t not in status]
        if missing:
            spec = {
                t: {"num_partitions": settings.kafka.topic_partitions,
                    "replication_factor": settings.kafka.replication_factor}
                for t in missing
            }
            result = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
            for topic in result["topics"]:
                status[topic["name"]] = _outcome(topic)
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot list or create topics at {settings.kafka.bootstrap}: {exc}") from exc
    finally:
        admin.close()
    for topic, outcome in status.items():
        if outcome == "created":
            log.info("created topic %s (%d partitions)", topic, settings.kafka.topic_partitions)
        elif outcome != "exists":
            log.warning("topic %s not created (%s); it must be created by the operator", topic, outcome)
    return status


def _outcome(topic: dict[str, Any]) -> str:
    code = topic.get("error_code", 0)
    if code == 0:
        return "created"
    if code == _EXISTS:
        return "exists"
    detail = topic.get("error_message") or f"error {code}"
    if code in _FORBIDDEN:
        return f"forbidden: {_FORBIDDEN[code]} ({detail})"
    return f"failed: {detail}"
