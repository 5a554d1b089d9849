"""The one Settings tree: every RANKTUNE_* variable, described once, checked at construction.

Settings are grouped by the loop's stages (`kafka`, `ingest`, `storage`, `model`, `lora`, `train`, `gate`,
`retrain`, `drift`, `api`, `scorer`) plus a few process-wide fields. A field `epochs` of group `train` is set
by `RANKTUNE_TRAIN_EPOCHS`, by `[train] epochs = 3` in the TOML file, and by the override `train_epochs=3`:
one name per setting everywhere. The `model`, `lora`, `train` and `gate` groups *are* (or extend) the frozen
configs of `adapters.config`, so their defaults and bounds are written once, there; `Settings.configs()`
hands `adapters` exactly the configs it takes.

Built once at start-up (`Settings.load`) and passed down explicitly; no module keeps a copy. Sources,
highest priority first: overrides, environment (`RANKTUNE_*`), a TOML file (`--config`), the defaults.
`python -m daemon.settings` prints the README's settings table.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from adapters.config import FrozenConfig, GateConfig, LoraSpec, ModelSpec, ServingPath, SplitConfig, TrainConfig
from daemon.errors import ConfigError

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
    poll_max_records: int = Field(2000, ge=1, le=100000, description="Most records one poll returns.")
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
        "auto", description="quantized (LoRA on the 4/8-bit base), merged-int8 or merged-fp32 (LoRA merged into a "
                            "dequantized copy; CPU only), or auto (merged-fp32 on CPU, quantized on CUDA).")


class OpsSettings(FrozenConfig):
    """The ops port: /metrics, /healthz and /readyz of every process, whatever its roles."""

    host: str = Field("127.0.0.1", description="Address the ops endpoints bind (0.0.0.0 in a container).")
    port: int = Field(9464, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 picks a free one).")


@dataclass(frozen=True)
class LearningConfigs:
    """What `adapters` takes, built from the settings by `Settings.configs()`."""

    model: ModelSpec
    lora: LoraSpec
    train: TrainConfig
    split: SplitConfig
    gate: GateConfig


class Settings(BaseSettings):
    """All of ranktune's configuration. Field descriptions are the documentation."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,  # RANKTUNE_KAFKA_SESSION_TIMEOUT_MS -> kafka.session_timeout_ms
        enable_decoding=False,  # list settings are comma-separated, not JSON
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()
    storage: StorageSettings = StorageSettings()
    model: ModelSpec = ModelSpec()
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    retrain: RetrainSettings = RetrainSettings()
    drift: DriftSettings = DriftSettings()
    api: ApiSettings = ApiSettings()
    scorer: ScorerSettings = ScorerSettings()
    ops: OpsSettings = OpsSettings()

    # --- process-wide ----------------------------------------------------------------------------
    roles: list[Role] = Field(list(ALL_ROLES), min_length=1, description="Roles `ranktune run` starts.")
    liveness_timeout_s: float = Field(
        120.0, gt=0, description="A worker busy this long without a heartbeat (or past its own deadline, if "
        "longer) is stuck: /healthz 503 and the process exits 1 for a restart.")
    shutdown_grace_s: float = Field(60.0, ge=0, description="How long SIGTERM waits for a running training.")
    log_level: LogLevel = Field("INFO", description="Log level.")
    log_format: LogFormat = Field(
        "text", description="`text`, or `json`: one JSON object per line with role, adapter version and run id.")

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def __init__(self, **values: Any) -> None:
        """Overrides may use flat names (`kafka_bootstrap="..."`) as well as groups (`kafka={...}`)."""
        super().__init__(**nest(values))

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, _KnownEnvSource(settings_cls)]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build the settings once, at the edge; raise `ConfigError` naming the bad variable."""
        if config_file is not None and not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        _TOML_FILE["path"] = config_file
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe(exc)) from None
        except ValueError as exc:  # a malformed TOML file, or an unknown override name
            where = f"config file {config_file}" if config_file is not None else "settings"
            raise ConfigError(f"{where}: {exc}") from None
        finally:
            _TOML_FILE["path"] = None

    def replace(self, **overrides: Any) -> Settings:
        """A copy with `overrides` (flat names or groups), validated like the original."""
        data = _deep_merge(self.model_dump(), nest(overrides))
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe(exc)) from None

    def configs(self) -> LearningConfigs:
        """The frozen configs `adapters` takes; the one place settings become them."""
        return LearningConfigs(
            model=self.model,
            lora=LoraSpec.model_validate(self.lora.model_dump()),
            train=_narrow(self.train, TrainConfig),
            split=_narrow(self.train, SplitConfig),
            gate=_narrow(self.gate, GateConfig),
        )

    def redacted(self) -> dict[str, Any]:
        """Settings for logs: secrets masked, personal-data keys never shown."""
        return {name: ("***" if isinstance(value, SecretStr) else value) for name, value in flat_items(self)}


class _KnownEnvSource(EnvSettingsSource):
    """The environment, without `RANKTUNE_*` variables that are no setting: those are warned about
    (`unknown_env_vars`) instead of failing start-up, like any unrelated variable."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        known = {env_name(flat).lower() for flat, *_ in field_paths()}
        return {k: v for k, v in super()._load_env_vars().items()
                if not k.startswith(ENV_PREFIX.lower()) or k in known}


# Pydantic builds sources from class methods, so the optional TOML path travels through this
# one-slot holder during `Settings.load` only; it is reset before `load` returns.
_TOML_FILE: dict[str, Path | None] = {"path": None}


def _narrow(group: BaseModel, cls: type[FrozenConfig]) -> Any:
    return cls.model_validate(group.model_dump(include=set(cls.model_fields)))


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _groups() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = ann
    return out


def field_paths() -> Iterator[tuple[str, str | None, str, Any]]:
    """`(flat name, group or None, field name, FieldInfo)` for every setting, in declaration order."""
    groups = _groups()
    for name, field in Settings.model_fields.items():
        if name in groups:
            for sub, sub_field in groups[name].model_fields.items():
                yield f"{name}_{sub}", name, sub, sub_field
        else:
            yield name, None, name, field


def env_name(flat: str) -> str:
    """The environment variable of a setting's flat name (`kafka_bootstrap` -> `RANKTUNE_KAFKA_BOOTSTRAP`)."""
    return ENV_PREFIX + flat.upper()


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names -> groups: `{"kafka_bootstrap": x}` -> `{"kafka": {"bootstrap": x}}`; others unchanged."""
    paths = {flat: (group, name) for flat, group, name, _ in field_paths() if group is not None}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in paths:
            group, name = paths[key]
            existing = out.setdefault(group, {})
            if isinstance(existing, BaseModel):
                existing = out[group] = existing.model_dump()
            existing[name] = value
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flat_items(settings: Settings) -> Iterator[tuple[str, Any]]:
    """`(flat name, value)` of every setting."""
    for flat, group, name, _ in field_paths():
        yield flat, getattr(getattr(settings, group), name) if group else getattr(settings, name)


def env_vars(settings: Settings) -> dict[str, str]:
    """Every setting that differs from its default, as the `RANKTUNE_*` variables that reproduce it in a
    child process (secrets in clear: for subprocess environments only, never for logs)."""
    defaults = {flat: field.default for flat, _group, _name, field in field_paths()}
    out = {}
    for flat, value in flat_items(settings):
        if value == defaults[flat]:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = str(value).lower()
        out[env_name(flat)] = ",".join(value) if isinstance(value, list | tuple) else str(value)
    return out


def describe(exc: ValidationError) -> str:
    """One line naming the environment variable of each invalid field."""
    groups = _groups()
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if not loc:
            env = "settings"
        elif loc[0] in groups:
            env = env_name("_".join(loc[:2])) if len(loc) > 1 else env_name(loc[0]) + "_*"
        else:
            env = env_name(loc[0])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(env, [env_name(flat) for flat, *_ in field_paths()], n=1)
            msg = "not a ranktune setting" + (f"; did you mean {close[0]}?" if close else "")
        parts.append(f"{env}: {msg}")
    return "invalid settings: " + "; ".join(parts)


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per `RANKTUNE_*` variable that is no setting, naming the closest real one."""
    environ = os.environ if environ is None else environ
    known = {env_name(flat) for flat, *_ in field_paths()}
    warnings = []
    for key in sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known):
        close = difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{key} is not a ranktune setting and is ignored{hint}")
    return warnings


def settings_table() -> str:
    """A Markdown table of every setting, for the README."""
    rows = ["| variable | default | description |", "|---|---|---|"]
    for flat, _group, _name, field in field_paths():
        default = field.default
        shown = "" if default is None else (",".join(default) if isinstance(default, list) else str(default))
        rows.append(f"| `{env_name(flat)}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
