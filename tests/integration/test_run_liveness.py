"""#14: in `ranktune run` (every role), an ingest thread that dies turns `/readyz` and `/healthz` 503 and the
process exits 1 for its supervisor (the audit saw it die silently with both probes green)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from daemon.tools.broker import EmbeddedBroker, free_port
from tests.fixtures.scoring import SPEC_KW

pytestmark = [pytest.mark.integration, pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# the ingest loop dies (what the audit's poison pill raised) once the other roles are up
SCRIPT = """
import sys, threading
from daemon.ingest.consumer import Ingestor
def connect(self, stack):
    while not self._stop.wait(0.2):
        self._touch()
        if open(sys.argv[1]).read() == "die":
            raise OverflowError("date value out of range")
    return False
Ingestor._connect = connect
from daemon.cli import main
sys.exit(main(["run"]))
"""


def _probe(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None


@pytest.mark.timeout(400)
def test_a_dead_ingest_thread_in_ranktune_run_flips_both_probes_and_exits_1(broker: EmbeddedBroker,
                                                                            tmp_path: Path) -> None:
    ops = free_port()
    switch = tmp_path / "switch"
    switch.write_text("live")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RANKTUNE_STORAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
           "RANKTUNE_STORAGE_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "RANKTUNE_OPS_PORT": str(ops),
           "RANKTUNE_API_PORT": str(free_port()), "RANKTUNE_KAFKA_BOOTSTRAP": broker.bootstrap,
           "RANKTUNE_KAFKA_CONTROL_TOPIC": f"{tmp_path.name[-20:]}.control",
           **{f"RANKTUNE_MODEL_{k.upper()}": str(v) for k, v in SPEC_KW.items()}}
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(switch)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{ops}"
    try:
        deadline = time.monotonic() + 300
        while _probe(base + "/readyz") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _probe(base + "/healthz") == 200
        switch.write_text("die")
        codes: set[tuple[int | None, int | None]] = set()
        while proc.poll() is None and time.monotonic() < deadline:
            codes.add((_probe(base + "/readyz"), _probe(base + "/healthz")))
            time.sleep(0.1)
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert "cannot recover (ingest: died: OverflowError: date value out of range)" in text
    assert (503, 503) in codes, codes  # both probes said so before the process exited
