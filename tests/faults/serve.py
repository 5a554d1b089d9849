"""`ranktune serve` replicas as real processes, and a prober that scores against them while a fault lasts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from daemon.tools.broker import free_port
from tests.fixtures.scoring import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCORE_BODY = {"query": "running shoes", "items": [
    {"item_id": "a", "text": "Red running shoe, mesh"}, {"item_id": "b", "text": "Blue wool sweater"}]}
RECONCILE_S = 3.0


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def score(self, timeout: float = 10) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/score", json=SCORE_BODY, timeout=timeout)

    def served(self) -> str | None:
        try:
            r = self.score()
        except httpx.HTTPError:
            return None
        return str(r.json()["adapter_version"]) if r.status_code == 200 else None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def serve_env(*, database_url: str, bootstrap: str, artifacts_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKTUNE_")}
    env.update({
        "RANKTUNE_STORAGE_DATABASE_URL": database_url, "RANKTUNE_KAFKA_BOOTSTRAP": bootstrap,
        "RANKTUNE_STORAGE_ARTIFACTS_DIR": str(artifacts_dir), "RANKTUNE_API_PORT": str(port),
        "RANKTUNE_API_TOKEN": TOKEN, "RANKTUNE_OPS_PORT": "0",
        "RANKTUNE_MODEL_QUANTIZATION": "none", "RANKTUNE_MODEL_DEVICE": "cpu", "RANKTUNE_MODEL_MAX_SEQ_LEN": "64",
        "RANKTUNE_SCORER_RECONCILE_INTERVAL_S": str(RECONCILE_S), "RANKTUNE_KAFKA_GROUP": f"serve-{port}",
        "RANKTUNE_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    return env


def start_replicas(n: int, tmp: Path, **env_kw: Any) -> list[Replica]:
    out = []
    for k in range(n):
        port = free_port()
        log_file = tmp / f"replica{k}.log"
        with log_file.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "serve"], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=serve_env(port=port, **env_kw))
        out.append(Replica(proc, port, log_file))
    deadline = time.monotonic() + 180
    try:
        for r in out:
            while not r.ready():
                assert r.proc.poll() is None, r.log()[-3000:]
                assert time.monotonic() < deadline, f"replica {r.url} not ready: {r.log()[-3000:]}"
                time.sleep(0.3)
    except BaseException:
        stop_replicas(out)  # none left running behind a failed start
        raise
    return out


def stop_replicas(replicas: list[Replica]) -> None:
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in replicas:
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


@dataclass
class ScoreProbe:
    """Scores on every replica every `interval` s in a thread; counts outcomes (HTTP status or error name)
    and, of the 200s, the adapter version that answered."""

    replicas: list[Replica]
    interval: float = 0.5
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for r in self.replicas:
                try:
                    resp = r.score(timeout=5)
                except httpx.HTTPError as exc:
                    self.outcomes[type(exc).__name__] += 1
                    continue
                try:
                    version = str(resp.json()["adapter_version"]) if resp.status_code == 200 else None
                except (ValueError, KeyError, TypeError):
                    self.outcomes["200 without a version"] += 1  # counted, never a dead probe thread
                    continue
                self.outcomes[str(resp.status_code)] += 1
                if version is not None:
                    self.versions[version] += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ScoreProbe:
        self._thread = threading.Thread(target=self._run, name="score-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
