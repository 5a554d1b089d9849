"""The one Settings object: every RANKTUNE_* variable, described once, checked at construction.

Built once at start-up (`Settings.load`) and passed down explicitly; no module keeps a copy.
Sources, highest priority first: constructor arguments, environment (`RANKTUNE_*`), a TOML file
(`--config`), the defaults below. `python -m daemon.settings` prints the README's settings table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.errors import ConfigError

Quantization = Literal["nf4", "int8", "none", "auto"]
DevicePref = Literal["auto", "cpu", "cuda"]
LossName = Literal["listwise", "pairwise", "pointwise"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Role = Literal["ingest", "scheduler", "serve"]

ALL_ROLES: tuple[Role, ...] = ("ingest", "scheduler", "serve")


class Settings(BaseSettings):
    """All of ranktune's configuration. Field descriptions are the documentation."""

    model_config = SettingsConfigDict(
        env_prefix="RANKTUNE_",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- Kafka -----------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, comma-separated.")
    kafka_group: str = Field("ranktune", description="Consumer group of the ingestion role.")
    kafka_session_timeout_ms: int = Field(
        10000, ge=1000, description="Consumer session timeout; a crashed member is evicted after it."
    )
    kafka_heartbeat_interval_ms: int = Field(
        2000, ge=100, description="Consumer heartbeat interval; must be under a third of the session timeout."
    )
    kafka_max_poll_interval_ms: int = Field(
        60000, ge=1000, description="Longest time between polls before the member leaves the group."
    )
    kafka_poll_max_records: int = Field(2000, ge=1, le=100000, description="Most records one poll returns.")
    kafka_poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for records.")
    kafka_topic_partitions: int = Field(3, ge=1, description="Partitions for topics ranktune creates.")
    kafka_replication_factor: int = Field(1, ge=1, description="Replication factor for topics ranktune creates.")
    kafka_security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol.")
    kafka_sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism (with SASL_*).")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers (with SSL).")
    feedback_topic: str = Field("ranktune.feedback", description="Topic of user-feedback events.")
    catalog_topic: str = Field("ranktune.catalog", description="Topic of catalog upserts.")
    deadletter_topic: str = Field("ranktune.deadletter", description="Topic rejected records go to.")
    control_topic: str = Field("ranktune.control", description="Topic of promote/rollback notices.")
    max_message_bytes: int = Field(65536, ge=1024, description="Largest accepted event message, in bytes.")

    # --- Storage ---------------------------------------------------------------------------------
    database_url: str = Field("sqlite:///./ranktune.db", description="SQLAlchemy URL (SQLite or PostgreSQL).")
    artifacts_dir: Path = Field(Path("./artifacts"), description="Folder of adapter version folders.")
    pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key for user_id/session_id; without it they are dropped."
    )

    # --- Model -----------------------------------------------------------------------------------
    base_model: str | None = Field(
        None, description="Local Hugging Face folder of the base model; default: the bundled all-MiniLM-L6-v2."
    )
    quantization: Quantization = Field("auto", description="nf4, int8, none, or auto (nf4 on CUDA, see README).")
    device: DevicePref = Field("auto", description="cuda, cpu, or auto (CUDA when available).")
    max_seq_len: int = Field(128, ge=16, le=512, description="Token limit of one query+item pair.")
    lora_r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="LoRA dropout.")
    lora_target_modules: list[str] | None = Field(
        None, description="Module names LoRA wraps; default chosen by architecture (BERT-like or decoder)."
    )

    # --- Training --------------------------------------------------------------------------------
    train_loss: LossName = Field("listwise", description="Ranking loss: listwise, pairwise or pointwise (BCE).")
    train_learning_rate: float = Field(5e-4, gt=0, description="AdamW peak learning rate.")
    train_head_lr_scale: float = Field(
        10.0, gt=0, description="Learning rate of the scoring head (and pooler) relative to LoRA's."
    )
    train_weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    train_warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps of linear warm-up.")
    train_groups_per_step: int = Field(8, ge=1, description="Query groups per optimisation step.")
    train_max_items_per_group: int = Field(20, ge=2, description="Items kept per query group in training.")
    train_epochs: int = Field(2, ge=1, description="Passes over the training set.")
    train_grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    train_eval_every_steps: int = Field(20, ge=1, description="Holdout evaluation interval, in steps.")
    train_patience: int = Field(3, ge=1, description="Evaluations without improvement before early stop.")
    train_min_delta: float = Field(0.002, ge=0, description="Smallest NDCG@10 gain that counts as improvement.")
    train_max_seconds: float = Field(900.0, gt=0, description="Wall-clock budget of one training run.")
    train_seed: int = Field(13, description="Seed of all randomness in training.")
    train_min_groups: int = Field(30, ge=2, description="Fewest labelled query groups needed to train.")
    train_max_groups: int = Field(3000, ge=10, description="Most query groups one run trains on (newest).")
    holdout_fraction: float = Field(0.2, gt=0, lt=0.5, description="Newest share of groups held out.")
    regression_fraction: float = Field(0.1, ge=0, lt=0.5, description="Oldest share kept as regression holdout.")
    replay_ratio: float = Field(0.3, ge=0, le=1, description="Older examples mixed in, per new example.")
    warm_start: bool = Field(True, description="Start a candidate from the champion's adapter weights.")

    # --- Promotion gate --------------------------------------------------------------------------
    gate_min_ndcg_gain: float = Field(0.005, ge=0, description="NDCG@10 gain over the champion needed.")
    gate_bootstrap_samples: int = Field(1000, ge=100, description="Paired bootstrap resamples over groups.")
    gate_confidence: float = Field(0.9, gt=0.5, lt=1, description="Share of resamples that must show a gain.")
    gate_regression_tolerance: float = Field(
        0.01, ge=0, description="Largest NDCG@10 loss allowed on the regression holdout."
    )
    auto_promote: bool = Field(True, description="Promote a candidate that passes the gate without a human.")

    # --- Scheduling and drift --------------------------------------------------------------------
    retrain_interval_s: float = Field(3600.0, gt=0, description="Interval of the retrain job.")
    retrain_min_events: int = Field(500, ge=1, description="New labelled events needed for a scheduled retrain.")
    drift_interval_s: float = Field(300.0, gt=0, description="Interval of the drift job.")
    drift_cooldown_s: float = Field(1800.0, ge=0, description="Least time between two drift-triggered retrains.")
    drift_window_events: int = Field(2000, ge=50, description="Events in the recent window of a drift report.")
    drift_min_events: int = Field(500, ge=20, description="Fewest recent events before drift is judged.")
    drift_psi_threshold: float = Field(0.2, gt=0, description="Score PSI above which prediction drift fires.")
    drift_term_js_threshold: float = Field(
        0.1, gt=0, description="Query-term Jensen-Shannon divergence (bits) above which input drift fires."
    )
    drift_unseen_threshold: float = Field(
        0.15, gt=0, le=1, description="Share of events with unseen items/terms above which input drift fires."
    )
    drift_ndcg_drop: float = Field(0.05, gt=0, description="Drop of the champion's NDCG@10 that fires.")

    # --- Scorer and API --------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    api_port: int = Field(8080, ge=0, le=65535, description="Port the HTTP API binds (0 picks a free one).")
    api_token: SecretStr | None = Field(None, description="Operator bearer token; operator endpoints off without.")
    api_max_items: int = Field(200, ge=1, description="Most items in one score request.")
    api_max_text_chars: int = Field(2048, ge=16, description="Longest query or item text.")
    api_max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body.")
    scorer_max_batch: int = Field(64, ge=1, description="Most pairs in one model forward.")
    scorer_max_wait_ms: float = Field(2.0, ge=0, description="How long the worker waits to fill a batch.")
    scorer_queue_size: int = Field(1024, ge=1, description="Pending requests before 503.")
    scorer_request_timeout_s: float = Field(30.0, gt=0, description="Longest a request waits for its scores.")
    reconcile_interval_s: float = Field(15.0, gt=0, description="How often a scorer re-reads the champion.")

    # --- Process ---------------------------------------------------------------------------------
    roles: list[Role] = Field(list(ALL_ROLES), description="Roles `ranktune run` starts.")
    liveness_timeout_s: float = Field(120.0, gt=0, description="A loop without progress this long is unhealthy.")
    shutdown_grace_s: float = Field(60.0, ge=0, description="How long SIGTERM waits for a running training.")
    stats_interval_s: float = Field(30.0, gt=0, description="Interval of the one-line ingestion summary.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                "kafka_heartbeat_interval_ms must be at most a third of kafka_session_timeout_ms "
                f"({self.kafka_heartbeat_interval_ms} * 3 > {self.kafka_session_timeout_ms})"
            )
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "kafka_security_protocol SASL_* needs kafka_sasl_mechanism, kafka_sasl_username "
                "and kafka_sasl_password"
            )
        topics = [self.feedback_topic, self.catalog_topic, self.deadletter_topic, self.control_topic]
        if len(set(topics)) != len(topics):
            raise ValueError(f"feedback/catalog/deadletter/control topics must differ: {topics}")
        if self.holdout_fraction + self.regression_fraction >= 0.8:
            raise ValueError("holdout_fraction + regression_fraction must leave data to train on (< 0.8)")
        if not self.database_url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database_url must be sqlite:/// or postgresql://, got {self.database_url.split(':')[0]}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build the settings once, at the edge; raise `ConfigError` naming the bad field."""
        if config_file is not None and not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        _TOML_FILE["path"] = config_file
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
        finally:
            _TOML_FILE["path"] = None

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the psycopg 3 driver named, as SQLAlchemy needs it."""
        url = self.database_url
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url

    def redacted(self) -> dict[str, Any]:
        """Settings for logs: secrets masked, personal-data keys never shown."""
        return {k: ("***" if isinstance(v, SecretStr) else v) for k, v in self.model_dump().items()}


# Pydantic builds sources from class methods, so the optional TOML path travels through this
# one-slot holder during `Settings.load` only; it is reset before `load` returns.
_TOML_FILE: dict[str, Path | None] = {"path": None}


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        env = f"RANKTUNE_{loc.upper()}" if err["loc"] else "settings"
        parts.append(f"{env}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)


def settings_table() -> str:
    """A Markdown table of every setting, for the README."""
    rows = ["| variable | default | description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None else (",".join(default) if isinstance(default, list) else str(default))
        rows.append(f"| `RANKTUNE_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
