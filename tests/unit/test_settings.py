"""The settings tree: every field is read from its own RANKTUNE_* variable, every bound is enforced, and
every error names the variable to fix. Parametrized over the tree itself, so a new field is tested too."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
import pytest
from pydantic import SecretStr

from daemon.errors import ConfigError
from daemon.settings import Settings, env_name, env_vars, field_paths, unknown_env_vars

FIELDS = list(field_paths())
IDS = [env_name(flat) for flat, *_ in FIELDS]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("RANKTUNE_")]:
        monkeypatch.delenv(key)


def _bounds(field: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for meta in field.metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if isinstance(meta, getattr(at, kind.capitalize())):
                out[kind] = getattr(meta, kind)
    return out


def _inner(annotation: Any) -> Any:
    """`X | None` -> X."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if get_origin(annotation) in (typing.Union, type(int | None)) and len(args) == 1 else annotation


def _other_value(flat: str, field: Any) -> tuple[str, Any]:
    """A valid value that differs from the default, as an environment string and as the parsed value."""
    ann, default = _inner(field.annotation), field.default
    if get_origin(ann) is Literal:
        if flat == "kafka_security_protocol":
            return "SSL", "SSL"
        choice = next(c for c in get_args(ann) if c != default)
        return str(choice), choice
    if get_origin(ann) is list:  # roles
        return "ingest,serve", ["ingest", "serve"]
    if get_origin(ann) is tuple:  # lora target modules
        return "query,value", ("query", "value")
    if ann is bool:
        return str(not default).lower(), not default
    if ann in (int, float) and default is None:  # an optional number (a seed): any valid one differs
        return "7", ann(7)
    if ann in (int, float):
        b = _bounds(field)
        step = 1 if ann is int else (0.01 if default is not None and abs(default) < 1 else 1.0)
        value = default + step if b.get("le", b.get("lt", float("inf"))) > default + step else default - step
        return str(value), value
    if ann is SecretStr:
        return "s3cret", SecretStr("s3cret")
    if ann is Path:
        return "/tmp/ranktune-test", Path("/tmp/ranktune-test")
    if flat == "storage_database_url":
        return "postgresql://u@h/db", "postgresql://u@h/db"
    return f"x-{flat}", f"x-{flat}"


@pytest.mark.parametrize(("flat", "group", "name", "field"), FIELDS, ids=IDS)
def test_each_setting_is_read_from_its_variable(flat: str, group: str | None, name: str, field: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    raw, expected = _other_value(flat, field)
    monkeypatch.setenv(env_name(flat), raw)
    s = Settings.load()
    got = getattr(getattr(s, group), name) if group else getattr(s, name)
    if isinstance(expected, SecretStr):
        assert got.get_secret_value() == expected.get_secret_value()
    else:
        assert got == expected and got != field.default
    # the same value as an override by the same name, and back as the variable for a child process
    assert env_vars(Settings.load(**{flat: got}))[env_name(flat)] == raw.replace(", ", ",")


BOUNDED = [(flat, field, kind, limit) for flat, _g, _n, field in FIELDS for kind, limit in _bounds(field).items()]


@pytest.mark.parametrize(("flat", "field", "kind", "limit"), BOUNDED,
                         ids=[f"{env_name(f)}-{k}" for f, _, k, _ in BOUNDED])
def test_each_bound_is_enforced_and_names_the_variable(flat: str, field: Any, kind: str, limit: float,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ann = _inner(field.annotation)
    step = 1 if ann is int else 1e-6
    outside = {"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit}[kind]
    inside = {"ge": limit, "gt": limit + step, "le": limit, "lt": limit - step}[kind]
    monkeypatch.setenv(env_name(flat), str(outside))
    with pytest.raises(ConfigError, match=env_name(flat)):
        Settings.load()
    if flat not in ("kafka_heartbeat_interval_ms", "kafka_session_timeout_ms", "train_holdout_fraction",
                    "train_regression_fraction"):  # these also have a cross-field rule, tested below
        monkeypatch.setenv(env_name(flat), str(inside))
        Settings.load()


NUMERIC = [flat for flat, _g, _n, field in FIELDS if _inner(field.annotation) in (int, float)]


@pytest.mark.parametrize("flat", NUMERIC, ids=[env_name(f) for f in NUMERIC])
def test_a_non_number_is_refused_with_the_variable_named(flat: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name(flat), "lots")
    with pytest.raises(ConfigError, match=f"{env_name(flat)}: Input should be a valid"):
        Settings.load()


@pytest.mark.parametrize(("env", "message"), [
    ({"RANKTUNE_KAFKA_HEARTBEAT_INTERVAL_MS": "4000"}, "RANKTUNE_KAFKA_\\*: heartbeat_interval_ms must be at most"),
    ({"RANKTUNE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
    ({"RANKTUNE_KAFKA_CONTROL_TOPIC": "ranktune.feedback"}, "topics must differ"),
    ({"RANKTUNE_TRAIN_HOLDOUT_FRACTION": "0.45", "RANKTUNE_TRAIN_REGRESSION_FRACTION": "0.4"},
     "RANKTUNE_TRAIN_\\*: holdout_fraction \\+ regression_fraction"),
    ({"RANKTUNE_STORAGE_DATABASE_URL": "mysql://x"}, "RANKTUNE_STORAGE_DATABASE_URL: must be sqlite"),
    ({"RANKTUNE_ROLES": "ingest,cook"}, "RANKTUNE_ROLES: Input should be 'ingest'"),
    ({"RANKTUNE_MODEL_QUANTIZATION": "fp3"}, "RANKTUNE_MODEL_QUANTIZATION: Input should be"),
])
def test_cross_field_rules_name_their_group(env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        Settings.load()


def test_priority_is_overrides_then_environment_then_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "r.toml"
    toml.write_text('log_level = "WARNING"\n[kafka]\nbootstrap = "toml:1"\ngroup = "from-toml"\n[train]\nepochs = 5\n')
    monkeypatch.setenv("RANKTUNE_KAFKA_BOOTSTRAP", "env:2")
    monkeypatch.setenv("RANKTUNE_TRAIN_EPOCHS", "4")
    s = Settings.load(toml, train_epochs=3)
    assert (s.kafka.bootstrap, s.kafka.group, s.train.epochs, s.log_level) == ("env:2", "from-toml", 3, "WARNING")


def test_toml_errors_name_the_file_or_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\nbootstrap = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        Settings.load(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nepohcs = 3\n")
    with pytest.raises(ConfigError, match=r"RANKTUNE_TRAIN_EPOHCS: not a ranktune setting; did you mean "
                                          r"RANKTUNE_TRAIN_EPOCHS\?"):
        Settings.load(typo)
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is not a regular file"):
        Settings.load(tmp_path)


def test_a_misspelled_variable_is_ignored_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKTUNE_KAFKA_BOOTSTRAPP", "typo:1")
    monkeypatch.setenv("RANKTUNE_TRAIN_EPOCHS", "3")
    s = Settings.load()
    assert s.kafka.bootstrap == "localhost:9092" and s.train.epochs == 3
    assert unknown_env_vars() == ["RANKTUNE_KAFKA_BOOTSTRAPP is not a ranktune setting and is ignored; "
                                  "did you mean RANKTUNE_KAFKA_BOOTSTRAP?"]


def test_configs_for_adapters_carry_the_settings() -> None:
    s = Settings.load(train_epochs=4, train_holdout_fraction=0.25, gate_confidence=0.95, lora_r=4,
                      model_max_seq_len=64)
    c = s.configs()
    assert (c.train.epochs, c.split.holdout_fraction, c.gate.confidence, c.lora.r, c.model.max_seq_len) == (
        4, 0.25, 0.95, 4, 64)
    assert c.split.seed == c.train.seed == s.train.seed
    assert not hasattr(c.train, "max_groups") and not hasattr(c.gate, "auto_promote")


def test_replace_validates_and_keeps_the_rest() -> None:
    s = Settings.load(kafka_group="g1")
    t = s.replace(kafka_bootstrap="b:1", api={"port": 0})
    assert (t.kafka.bootstrap, t.kafka.group, t.api.port, s.kafka.bootstrap) == ("b:1", "g1", 0, "localhost:9092")
    with pytest.raises(ConfigError, match="RANKTUNE_API_PORT"):
        s.replace(api_port=70000)


def test_secrets_are_redacted() -> None:
    s = Settings.load(api_token="tok-123", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                      kafka_sasl_username="u", kafka_sasl_password="pw-456")
    shown = repr(s.redacted()) + repr(s)
    assert "tok-123" not in shown and "pw-456" not in shown
