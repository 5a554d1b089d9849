"""The groups of the Settings tree (`daemon.settings`): one class per stage of the loop, each field
with its bounds and description. `daemon.settings` assembles them; import them from there."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import Field, SecretStr, field_validator, model_validator

from adapters.config import FrozenConfig, GateConfig, LoraSpec, ServingPath, SplitConfig, TrainConfig

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Role = Literal["ingest", "scheduler", "serve"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
ExploreMode = Literal["swap_adjacent", "shuffle_top_k"]

ALL_ROLES: tuple[Role, ...] = ("ingest", "scheduler", "serve")
ENV_PREFIX = "RANKTUNE_"


def split_csv(value: Any) -> Any:
    """`"a, b"` -> `["a", "b"]` (environment and TOML strings for list settings); other values unchanged."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class KafkaSettings(FrozenConfig):
    """The broker, the consumer group and the topics."""

    bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, comma-separated.")
    group: str = Field("ranktune", description="Consumer group of the ingestion role.")
    session_timeout_ms: int = Field(
        10000, ge=1000, description="Consumer session timeout; a crashed member is evicted after it.")
    heartbeat_interval_ms: int = Field(
        2000, ge=100, description="Consumer heartbeat interval; must be under a third of the session timeout.")
    max_poll_interval_ms: int = Field(
        60000, ge=1000, description="Longest time between polls before the member leaves the group.")
    poll_max_records: int = Field(5000, ge=1, le=100000, description="Most records one poll returns.")
    poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for records.")
    topic_partitions: int = Field(3, ge=1, description="Partitions for topics ranktune creates.")
    replication_factor: int = Field(1, ge=1, description="Replication factor for topics ranktune creates.")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism (with SASL_*).")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers (with SSL).")
    feedback_topic: str = Field("ranktune.feedback", min_length=1, description="Topic of user-feedback events.")
    catalog_topic: str = Field("ranktune.catalog", min_length=1, description="Topic of catalog upserts.")
    deadletter_topic: str = Field("ranktune.deadletter", min_length=1, description="Topic rejected records go to.")
    control_topic: str = Field("ranktune.control", min_length=1, description="Topic of promote/rollback notices.")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be at most a third of session_timeout_ms "
                f"({self.heartbeat_interval_ms} * 3 > {self.session_timeout_ms})")
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError("security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password")
        topics = [self.feedback_topic, self.catalog_topic, self.deadletter_topic, self.control_topic]
        if len(set(topics)) != len(topics):
            raise ValueError(f"feedback/catalog/deadletter/control topics must differ: {topics}")
        return self


class IngestSettings(FrozenConfig):
    """What the ingestion loop accepts and reports."""

    max_message_bytes: int = Field(65536, ge=1024, description="Largest accepted event message, in bytes.")
    pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key for user_id/session_id; without it they are dropped.")
    stats_interval_s: float = Field(30.0, gt=0, description="Interval of the one-line ingestion summary.")
    max_future_skew_s: float = Field(
        3600.0, ge=0, le=31_536_000,
        description="How far an event's ts may lie ahead of its record's time, min(broker timestamp, now), "
                    "in seconds; beyond it the event is dead-lettered (future_ts).")


class EngineOptions(TypedDict):
    """`storage.db.make_engine`'s timeouts (`**settings.storage.engine_options`)."""

    connect_timeout_s: int
    statement_timeout_ms: int


class StorageSettings(FrozenConfig):
    """The database and the artifacts folder."""

    database_url: str = Field("sqlite:///./ranktune.db", description="SQLAlchemy URL (SQLite or PostgreSQL).")
    artifacts_dir: Path = Field(Path("./artifacts"), description="Folder of adapter version folders.")
    connect_timeout_s: int = Field(
        10, ge=1, le=600, description="PostgreSQL: give up a connection attempt after this many seconds.")
    statement_timeout_ms: int = Field(
        120_000, ge=0, le=86_400_000,
        description="PostgreSQL: cancel any statement running longer than this (0: no limit; "
                    "`ranktune db upgrade` never has one).")

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"must be sqlite:/// or postgresql://, got {url.split(':')[0]}")
        return url

    @property
    def engine_options(self) -> EngineOptions:
        """The keyword arguments of `storage.db.make_engine` from these settings."""
        return EngineOptions(connect_timeout_s=self.connect_timeout_s, statement_timeout_ms=self.statement_timeout_ms)

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the psycopg 3 driver named, as SQLAlchemy needs it."""
        if self.database_url.startswith("postgresql://"):
            return "postgresql+psycopg://" + self.database_url.removeprefix("postgresql://")
        return self.database_url


class LoraSettings(LoraSpec):
    """`LoraSpec`, plus a comma-separated `target_modules` from the environment."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        return split_csv(value)


class TrainSettings(TrainConfig, SplitConfig):
    """One training run (`TrainConfig`), its data split (`SplitConfig`), and what the daemon feeds it."""

    max_groups: int = Field(3000, ge=10, description="Most query groups one run trains on (newest).")
    warm_start: bool = Field(True, description="Start a candidate from the champion's adapter weights.")


class GateSettings(GateConfig):
    """The promotion gate (`GateConfig`) and whether a pass promotes by itself."""

    auto_promote: bool = Field(True, description="Promote a candidate that passes the gate without a human.")


class RetrainSettings(FrozenConfig):
    """The scheduled retrain job."""

    interval_s: float = Field(3600.0, gt=0, description="Interval of the retrain job.")
    min_events: int = Field(500, ge=1, description="New labelled events needed for a scheduled retrain.")


class DriftSettings(FrozenConfig):
    """The drift job (see `daemon.training.drift`)."""

    interval_s: float = Field(300.0, gt=0, description="Interval of the drift job.")
    cooldown_s: float = Field(1800.0, ge=0, description="Least time between two drift-triggered retrains.")
    window_events: int = Field(2000, ge=50, description="Events in the recent window of a drift report.")
    min_events: int = Field(500, ge=20, description="Fewest recent events before drift is judged.")
    psi_threshold: float = Field(0.2, gt=0, description="Score PSI above which prediction drift fires.")
    term_js_threshold: float = Field(
        0.1, gt=0, description="Query-term Jensen-Shannon divergence (bits) above which input drift fires.")
    unseen_threshold: float = Field(
        0.15, gt=0, le=1, description="Share of events with unseen items/terms above which input drift fires.")
    ndcg_drop: float = Field(0.05, gt=0, description="Drop of the champion's NDCG@10 that fires.")


class ApiSettings(FrozenConfig):
    """The HTTP API and its request limits."""

    host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port the HTTP API binds (0 picks a free one).")
    token: SecretStr | None = Field(None, description="Operator bearer token; operator endpoints off without.")
    max_items: int = Field(200, ge=1, description="Most items in one score request.")
    max_text_chars: int = Field(2048, ge=16, description="Longest query or item text.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body.")
    catalog_cache_items: int = Field(
        100_000, ge=1, description="Catalog texts cached for score requests without item text (LRU).")
    catalog_cache_ttl_s: float = Field(
        60.0, ge=0, description="A cached catalog text is re-read after this long; older ones are still "
                                "served while the database is unavailable.")


class ScorerSettings(FrozenConfig):
    """The live scorer and how it follows the registry."""

    max_batch: int = Field(64, ge=1, description="Most pairs in one model forward.")
    max_wait_ms: float = Field(2.0, ge=0, description="How long the worker waits to fill a batch.")
    queue_size: int = Field(1024, ge=1, description="Pending requests before 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="Longest a request waits for its scores.")
    reconcile_interval_s: float = Field(15.0, gt=0, description="How often a scorer re-reads the champion.")
    explore_rate: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Share of /v1/score requests answered in a randomly perturbed order (marked `explore: true`) so that "
        "position bias can be estimated from interventions; 0 turns exploration off."))
    explore_mode: ExploreMode = Field("swap_adjacent", description=(
        "How an explored response is perturbed: swap_adjacent (random adjacent pairs within the top k) or "
        "shuffle_top_k (a uniform shuffle of the top k)."))
    explore_top_k: int = Field(10, ge=2, le=1000, description="Only the model's top k items are ever moved.")
    explore_seed: int | None = Field(None, ge=0, description=(
        "Seed of the exploration RNG (one per process); unset: fresh entropy at start."))
    serving_path: ServingPath = Field(
        "auto", description="quantized (LoRA on the 4/8-bit base), merged-int8, merged-bf16 or merged-fp32 (LoRA "
                            "merged into a dequantized copy; CPU only), or auto (on CPU merged-bf16 where the CPU "
                            "has bf16 instructions, else merged-fp32; quantized on CUDA).")


class OpsSettings(FrozenConfig):
    """The ops port: /metrics, /healthz and /readyz of every process, whatever its roles."""

    host: str = Field("127.0.0.1", description="Address the ops endpoints bind (0.0.0.0 in a container).")
    port: int = Field(9464, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 picks a free one).")
