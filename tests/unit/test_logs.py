"""RANKTUNE_LOG_FORMAT=json: one JSON object per line, with role, adapter version and run id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.settings import Settings
from daemon.training.trainer_process import TrainerProcess
from storage.db import ensure_schema, make_engine
from tests.integration.crash_targets import raise_inside

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, warnings
from daemon import logs
logs.configure_logging("INFO", "json")
log = logging.getLogger("daemon.test")
log.info("before bind")
logs.bind(role="ingest,serve", version=lambda: "v0003")
log.info("plain %s", "line")
log.info("with extra", extra={"run_id": 12})
with logs.run_context(41):
    log.warning("inside a run")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("it broke\\non two lines")
warnings.warn("a library warning")
logging.getLogger("kafka.conn").info("hidden: kafka stays at WARNING")
"""


def test_every_line_is_one_json_object_with_the_context() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [x["message"] for x in lines] == ["before bind", "plain line", "with extra", "inside a run",
                                             "it broke\non two lines", lines[-1]["message"]]
    assert all(list(x)[:4] == ["ts", "level", "logger", "message"] for x in lines)
    first, plain, extra, in_run, broke, warned = lines
    assert first["role"] is None and first["adapter_version"] is None and first["run_id"] is None
    assert plain["role"] == "ingest,serve" and plain["adapter_version"] == "v0003" and plain["run_id"] is None
    assert plain["ts"].endswith("+00:00") and plain["level"] == "INFO" and plain["logger"] == "daemon.test"
    assert extra["run_id"] == 12 and in_run["run_id"] == 41 and in_run["level"] == "WARNING"
    assert "ZeroDivisionError: division by zero" in broke["exc_info"]
    assert warned["logger"] == "py.warnings" and "a library warning" in warned["message"]


@pytest.mark.slow
def test_the_training_child_logs_json_with_its_run_id(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    settings = Settings.load(storage_database_url=f"sqlite:///{tmp_path / 'r.db'}", log_format="json",
                             storage_artifacts_dir=tmp_path / "artifacts")
    engine = make_engine(settings.storage.sqlalchemy_url)
    ensure_schema(engine)
    try:
        outcome = TrainerProcess(settings, engine, target=raise_inside).run("schedule")
    finally:
        engine.dispose()
    assert outcome.status == "failed" and "CUDA out of memory (simulated)" in (outcome.error or "")
    child = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    (failed,) = [x for x in child if x["message"] == f"training run {outcome.run_id} failed"]
    assert failed["role"] == "trainer" and failed["run_id"] == outcome.run_id and failed["level"] == "ERROR"
    assert "RuntimeError: CUDA out of memory (simulated)" in failed["exc_info"]
