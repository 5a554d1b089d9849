"""Truthful liveness, end to end through the Application and its ops port (no broker needed: the ingest
loop's connect is replaced by a fault). A worker that dies flips /healthz, /readyz and
`ranktune_worker_up`; one that stalls flips /readyz only, and recovers; a process that cannot recover
exits with code 1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.app import Application
from daemon.ingest.consumer import Ingestor
from daemon.settings import Settings
from tests.fixtures.ingest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.load(storage_database_url=f"sqlite:///{tmp_path / 'ranktune.db'}", ops_port=0,
                         kafka_bootstrap="127.0.0.1:9", storage_artifacts_dir=tmp_path / "artifacts", **overrides)


@pytest.fixture
def ingest_app(tmp_path: Path) -> Iterator[Callable[..., Application]]:
    started: list[tuple[Application, threading.Thread]] = []

    def start(**overrides: Any) -> Application:
        app = Application(_settings(tmp_path, **overrides), ["ingest"], exit_when_unhealthy=False)
        thread = threading.Thread(target=app.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        assert app.started.wait(30)
        started.append((app, thread))
        return app

    yield start
    for app, thread in started:
        app.stop()
        thread.join(30)


def _get(app: Application, path: str) -> httpx.Response:
    assert app.ops is not None
    return httpx.get(app.ops.url + path, timeout=5)


def _worker_up(app: Application, worker: str) -> float | None:
    for line in _get(app, "/metrics").text.splitlines():
        if line.startswith(f'ranktune_worker_up{{worker="{worker}"}}'):
            return float(line.split()[-1])
    return None


def test_a_dead_ingest_loop_flips_healthz_readyz_and_the_metric(ingest_app, monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(self: Ingestor, stack: ExitStack) -> bool:
        raise OverflowError("date value out of range")  # what the audit's poison pill raised

    monkeypatch.setattr(Ingestor, "_connect", connect)
    app = ingest_app()
    wait_until(lambda: _get(app, "/healthz").status_code == 503, 10, "/healthz to turn 503")
    health = _get(app, "/healthz").json()
    assert health["fatal"] == ["ingest: died: OverflowError: date value out of range"]
    ready = _get(app, "/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["workers"]["ingest"]["state"] == "dead"
    assert "ingest: died: OverflowError" in body["error"]["message"]
    assert _worker_up(app, "ingest") == 0.0
    assert "ranktune_process_live 0.0" in _get(app, "/metrics").text


def test_a_stalled_ingest_loop_is_not_ready_until_it_beats_again(ingest_app,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def connect(self: Ingestor, stack: ExitStack) -> bool:
        self._touch()
        release.wait(60)  # a call that hangs (kafka-python's commit can ignore its timeout)
        while not self._stop.wait(0.05):
            self._touch()
        return False

    monkeypatch.setattr(Ingestor, "_connect", connect)
    app = ingest_app(kafka_max_poll_interval_ms=1000)  # the ingest loop's deadline: 1 s
    wait_until(lambda: _get(app, "/readyz").status_code == 503, 10, "/readyz to turn 503")
    body = _get(app, "/readyz").json()
    assert body["workers"]["ingest"]["state"] == "stalled" and body["workers"]["ingest"]["deadline_s"] == 1.0
    assert body["not_ready"][0].startswith("ingest: no heartbeat for")
    assert _worker_up(app, "ingest") == 0.0
    assert _get(app, "/healthz").status_code == 200  # stalled under the liveness timeout: may recover
    release.set()
    wait_until(lambda: _get(app, "/readyz").status_code == 200, 10, "/readyz to recover")
    assert _worker_up(app, "ingest") == 1.0


FAULTS = {
    "raises": "def connect(self, stack):\n    raise RuntimeError('injected fault')\n",
    "hangs": "import time\ndef connect(self, stack):\n    self._touch()\n    time.sleep(600)\n",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_process_that_cannot_recover_exits_1_and_logs_json(fault: str, tmp_path: Path) -> None:
    script = (FAULTS[fault] + "import sys\nfrom daemon.ingest.consumer import Ingestor\n"
              "Ingestor._connect = connect\nfrom daemon.cli import main\nsys.exit(main(['ingest']))\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RANKTUNE_STORAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "RANKTUNE_OPS_PORT": "0",
           "RANKTUNE_KAFKA_BOOTSTRAP": "127.0.0.1:9", "RANKTUNE_LOG_FORMAT": "json",
           "RANKTUNE_KAFKA_MAX_POLL_INTERVAL_MS": "1000", "RANKTUNE_LIVENESS_TIMEOUT_S": "2"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message", "role", "adapter_version", "run_id"} <= set(x) for x in lines)
    assert {x["role"] for x in lines if x["logger"].startswith("daemon.")} == {"ingest"}
    final = [x for x in lines if x["level"] == "ERROR" and "cannot recover" in x["message"]]
    expected = "ingest: died: RuntimeError: injected fault" if fault == "raises" else "ingest: stuck"
    assert len(final) == 1 and expected in final[0]["message"], final
    if fault == "raises":
        (died,) = [x for x in lines if x["message"] == "worker ingest died"]
        assert "RuntimeError: injected fault" in died["exc_info"]
