"""sqlmodel tables. Queries live in the repository modules, never here.

Timestamps are stored timezone-aware (UTC). JSON columns use SQLAlchemy's generic JSON type, which
maps to JSON on PostgreSQL and TEXT on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import JSON, BigInteger, Column, DateTime, Text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(ts: datetime) -> datetime: ...
@overload
def as_utc(ts: None) -> None: ...
def as_utc(ts: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime: SQLite hands them back without a zone (they are stored
    in UTC); PostgreSQL in the session's zone."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _ts(index: bool = False, nullable: bool = False) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index))


class FeedbackEvent(SQLModel, table=True):
    """One user-feedback event, keyed by its producer-given id (duplicates are absorbed)."""

    __tablename__ = "feedback_events"
    event_id: str = Field(primary_key=True, max_length=128)
    ts: datetime = _ts()  # not indexed: every read goes by `ingested_at` (migration 0003)
    query: str = Field(max_length=512)
    item_id: str = Field(max_length=128)
    action: str = Field(max_length=16)
    item_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    position: int | None = None
    request_id: str | None = Field(default=None, max_length=128)
    session_hash: str | None = Field(default=None, max_length=64)
    user_hash: str | None = Field(default=None, max_length=64)
    # Exploration (`daemon.serving.explore`): the scorer perturbed this page's order on purpose, and
    # `ranked_position` is where its model had ranked the item (0-based, like `position`).
    explore: bool | None = None
    ranked_position: int | None = None
    topic: str = Field(max_length=255)
    partition: int
    offset: int = Field(sa_column=Column(BigInteger, nullable=False))
    # When ranktune stored it: the scheduler counts "new since the last run" by this, not by the
    # producer's `ts`, which may lag or lie.
    ingested_at: datetime = _ts(index=True)


class CatalogItem(SQLModel, table=True):
    """The latest catalog upsert per item (a later `ts` replaces an earlier one)."""

    __tablename__ = "catalog_items"

    item_id: str = Field(primary_key=True, max_length=128)
    title: str = Field(sa_column=Column(Text, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    category: str | None = Field(default=None, max_length=255)
    brand: str | None = Field(default=None, max_length=255)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    ts: datetime = _ts()
    updated_at: datetime = _ts()


class TrainingRun(SQLModel, table=True):
    """One training attempt, successful or not, or a scheduled run that was skipped."""

    __tablename__ = "training_runs"

    id: int | None = Field(default=None, primary_key=True)
    trigger: str = Field(max_length=16)  # schedule | drift | manual
    status: str = Field(max_length=16, index=True)  # running | succeeded | failed | skipped
    started_at: datetime = _ts(index=True)
    finished_at: datetime | None = _ts(nullable=True)
    device: str | None = Field(default=None, max_length=32)
    quantization: str | None = Field(default=None, max_length=8)
    n_train: int | None = None
    n_holdout: int | None = None
    n_regression: int | None = None
    n_replay: int | None = None
    best_step: int | None = None
    steps: int | None = None
    early_stopped: bool | None = None
    seconds: float | None = None
    examples_per_s: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    candidate_version: str | None = Field(default=None, max_length=32)
    data_cutoff: datetime | None = _ts(nullable=True)  # newest `ingested_at` the run trained on
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class AdapterVersion(SQLModel, table=True):
    """An immutable adapter version. Only `status` and the gate record change after creation."""

    __tablename__ = "adapter_versions"

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=32, unique=True, index=True)
    parent_version: str | None = Field(default=None, max_length=32)
    base_model: str = Field(max_length=512)
    quantization: str = Field(max_length=8)
    lora_config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    status: str = Field(max_length=16, index=True)  # candidate | champion | retired | rejected
    artifact_path: str = Field(max_length=1024)
    checksum: str = Field(max_length=64)
    training_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    created_at: datetime = _ts()


class TrainingLease(SQLModel, table=True):
    """Who may train on this database now (`storage.db.exclusive_training`): one row while a training runs,
    renewed by its process; a lease past `expires_at` belongs to nobody (its holder died or lost the link)."""

    __tablename__ = "training_leases"

    name: str = Field(primary_key=True, max_length=16)
    holder: str = Field(max_length=128)
    expires_at: datetime = _ts()


class RegistryAlias(SQLModel, table=True):
    """Moving pointers over immutable versions: `champion` and `previous` (value `base` = no adapter)."""

    __tablename__ = "registry_aliases"

    name: str = Field(primary_key=True, max_length=32)
    version: str = Field(max_length=32)
    updated_at: datetime = _ts()


class DriftStatistics(SQLModel):
    """The numbers of one drift report: window sizes and each detector's statistic (None: not computed).
    Shared by the table and the API's `DriftOut`."""

    n_reference: int
    n_recent: int
    score_psi: float | None = None
    term_js: float | None = None
    unseen_item_share: float | None = None
    unseen_term_share: float | None = None
    recent_ndcg: float | None = None
    recent_auc: float | None = None
    reference_ndcg: float | None = None


class DriftReport(DriftStatistics, table=True):
    """One drift computation between the champion's reference window and the recent window."""

    __tablename__ = "drift_reports"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts(index=True)
    champion_version: str = Field(max_length=32)
    fired: bool = False
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    triggered_run_id: int | None = None


class AuditLog(SQLModel, table=True):
    """Append-only record of every registry action, by operators or by ranktune itself."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = _ts(index=True)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=32)  # promote | rollback | auto_promote | reject
    from_version: str | None = Field(default=None, max_length=32)
    to_version: str | None = Field(default=None, max_length=32)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
