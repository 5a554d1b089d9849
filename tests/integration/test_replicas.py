"""Two `ranktune serve` processes on one PostgreSQL and one broker converge after promote and rollback.

The replicas' periodic reconcile is set to 5 minutes, so convergence within seconds can only come from
the control topic; the start-up reconcile is checked by starting them after a first promotion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.cli import main as cli_main
from daemon.serving.control import ControlPublisher
from daemon.settings import Settings
from daemon.tools.broker import EmbeddedBroker, free_port
from daemon.training.promotion import promote, rollback
from storage.db import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.broker, pytest.mark.postgres]

CONVERGE_S = 10.0


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[tuple[str, Engine]]:
    eng = make_engine(pg_url)
    try:
        yield pg_url, eng
    finally:
        eng.dispose()


def _env(pg_url: str, broker: EmbeddedBroker, artifacts_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKTUNE_")}
    env.update({
        "RANKTUNE_STORAGE_DATABASE_URL": pg_url, "RANKTUNE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "RANKTUNE_STORAGE_ARTIFACTS_DIR": str(artifacts_dir), "RANKTUNE_API_PORT": str(port),
        "RANKTUNE_OPS_PORT": "0",
        "RANKTUNE_MODEL_QUANTIZATION": "none", "RANKTUNE_MODEL_DEVICE": "cpu", "RANKTUNE_MODEL_MAX_SEQ_LEN": "64",
        "RANKTUNE_SCORER_RECONCILE_INTERVAL_S": "300", "RANKTUNE_KAFKA_GROUP": f"t{port}",
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    return env


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if cond():
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _ready(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/readyz", timeout=5)
    return r.json() if r.status_code == 200 else {}


def test_two_replicas_converge_via_control_topic(
    pg_engine: tuple[str, Engine], broker: EmbeddedBroker, artifacts_dir: Path, tmp_path: Path,
    make_versions: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg_url, engine = pg_engine
    v1, v2 = make_versions(engine, 2)
    settings = Settings.load(storage_database_url=pg_url, kafka_bootstrap=broker.bootstrap,
                             storage_artifacts_dir=artifacts_dir)
    publisher = ControlPublisher(settings)
    promote(engine=engine, version=v1, actor="test", publish=publisher.publish)  # before the replicas start

    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = []
    logs = []
    try:
        for k, port in enumerate(ports):
            log = open(tmp_path / f"replica{k}.log", "wb")  # noqa: SIM115
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "daemon.cli", "serve"], stdout=log,
                                          stderr=subprocess.STDOUT, env=_env(pg_url, broker, artifacts_dir, port)))
        def listening(url: str) -> Callable[[], bool]:
            return lambda: _ready(url).get("control") == "listening"

        for url in urls:
            _wait(listening(url), 120, f"{url} ready and listening")
        assert [_ready(u)["adapter_version"] for u in urls] == [v1, v1]  # start-up reconcile

        def converged(version: str) -> Callable[[], bool]:
            return lambda: all(_ready(u).get("adapter_version") == version for u in urls)

        promote(engine=engine, version=v2, actor="test", reason="replica test", publish=publisher.publish)
        took = _wait(converged(v2), CONVERGE_S, f"both replicas on {v2}")
        for url in urls:
            body = httpx.post(f"{url}/v1/score", json={"query": "boots", "items": [
                {"item_id": "a", "text": "leather boots"}, {"item_id": "b", "text": "cotton shirt"}]}).json()
            assert body["adapter_version"] == v2

        result = rollback(engine=engine, actor="test", publish=publisher.publish)
        assert result.published and result.to_version == v1
        took_rb = _wait(converged(v1), CONVERGE_S, f"both replicas back on {v1}")

        # the CLI path: database directly + control notice
        for key, value in {"RANKTUNE_STORAGE_DATABASE_URL": pg_url, "RANKTUNE_KAFKA_BOOTSTRAP": broker.bootstrap,
                           "RANKTUNE_STORAGE_ARTIFACTS_DIR": str(artifacts_dir)}.items():
            monkeypatch.setenv(key, value)
        assert cli_main(["adapters", "promote", "base", "--actor", "ci", "--reason", "zero-shot check"]) == 0
        took_cli = _wait(converged("base"), CONVERGE_S, "both replicas on base")
        print(f"\nconverged in {took:.2f}s (promote), {took_rb:.2f}s (rollback), {took_cli:.2f}s (CLI promote)")

        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(30) for p in procs] == [0, 0]
    finally:
        publisher.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
