"""The one Settings tree: every RANKTUNE_* variable, described once, checked at construction.

Settings are grouped by the loop's stages (`kafka`, `ingest`, `storage`, `model`, `lora`, `train`, `gate`,
`retrain`, `drift`, `api`, `scorer`) plus a few process-wide fields. A field `epochs` of group `train` is set
by `RANKTUNE_TRAIN_EPOCHS`, by `[train] epochs = 3` in the TOML file, and by the override `train_epochs=3`:
one name per setting everywhere. The `model`, `lora`, `train` and `gate` groups *are* (or extend) the frozen
configs of `adapters.config`, so their defaults and bounds are written once, there; `Settings.configs()`
hands `adapters` exactly the configs it takes.

Built once at start-up (`Settings.load`) and passed down explicitly; no module keeps a copy. Sources,
highest priority first: overrides, environment (`RANKTUNE_*`), a TOML file (`--config`), the defaults.
`python -m daemon.settings` prints the README's settings table. The groups live in `daemon.settings_groups`.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from adapters.config import FrozenConfig, GateConfig, LoraSpec, ModelSpec, SplitConfig, TrainConfig
from daemon.errors import ConfigError
from daemon.settings_groups import (  # noqa: F401  (re-exported: the groups are part of this API)
    ALL_ROLES,
    ENV_PREFIX,
    ApiSettings,
    DriftSettings,
    EngineOptions,
    ExploreMode,
    GateSettings,
    IngestSettings,
    KafkaSettings,
    LogFormat,
    LogLevel,
    LoraSettings,
    OpsSettings,
    RetrainSettings,
    Role,
    SaslMechanism,
    ScorerSettings,
    SecurityProtocol,
    StorageSettings,
    TrainSettings,
    split_csv,
)


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
            what = "is not a regular file" if config_file.exists() else "does not exist"
            raise ConfigError(f"config file {config_file} {what}")
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
