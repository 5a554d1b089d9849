"""`ranktune status` (text and --json) shows the champion's and the latest run's position-bias curve and the
gate's smallest detectable gain, as the training cycle stores them."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from adapters.gate import GateDecision
from adapters.propensity import PropensityCurve
from daemon.commands import status as status_cmd
from daemon.settings import Settings
from daemon.status import status_document
from daemon.training.messages import GateVerdict
from storage.db import make_engine, session_scope, upgrade
from storage.models import AdapterVersion, RegistryAlias, TrainingRun, utcnow

CHAMP_CURVE = PropensityCurve((1.0, 0.52, 0.34, 0.26), "randomized", 812, 455, (800, 800, 800, 800))
LATEST_CURVE = PropensityCurve((1.0, 0.61, 0.45, 0.37), "regression_em", 1500, 990, (1500, 1500, 1500, 1500))


def _run(s: Any, version: str, compared_with: str, curve: PropensityCurve | None, mdg: float, passed: bool,
         minutes: int) -> int:
    """A succeeded run as `daemon.training.cycle.run_cycle` records it (metrics["propensity"], the gate record)."""
    metrics: dict[str, Any] = {"candidate": {"holdout": {"ndcg10": 0.7}}}
    if curve is not None:
        metrics["propensity"] = {"estimated": list(curve.values), **curve.to_dict(), "used": True}
    gate = GateVerdict(compared_with=compared_with, decision=GateDecision(
        passed=passed, ndcg_gain=0.03, min_detectable_gain=mdg, bootstrap_se=mdg / 2.5)).record()
    at = utcnow() - timedelta(hours=2) + timedelta(minutes=minutes)
    run = TrainingRun(trigger="schedule", status="succeeded", started_at=at, finished_at=at + timedelta(minutes=3),
                      metrics=metrics, gate=gate, candidate_version=version)
    s.add(run)
    s.flush()
    s.add(AdapterVersion(version=version, base_model="m", quantization="nf4", status="candidate",
                         artifact_path=f"/nowhere/{version}", checksum="0" * 64, training_run_id=run.id,
                         metrics=metrics, gate=gate, created_at=at))
    return int(run.id or 0)


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Engine]:
    url = f"sqlite:///{tmp_path / 'status.db'}"
    eng = make_engine(url)
    upgrade(eng)
    return url, eng


def test_status_shows_the_champions_curve_and_the_latest(db: tuple[str, Engine],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    url, eng = db
    empty = status_document(eng)["position_bias"]
    assert empty == {"champion_run": None, "latest_run": None}
    with session_scope(eng) as s:
        champ_run = _run(s, "v0001", "base", CHAMP_CURVE, 0.0123, True, 0)
        s.add(RegistryAlias(name="champion", version="v0001", updated_at=utcnow()))
        latest_run = _run(s, "v0002", "v0001", LATEST_CURVE, 0.0211, False, 60)
    pb = status_document(eng)["position_bias"]
    eng.dispose()
    champ, latest = pb["champion_run"], pb["latest_run"]
    assert (champ["run_id"], champ["candidate_version"], champ["compared_with"]) == (champ_run, "v0001", "base")
    assert champ["propensity"] == {"method": "randomized", "n_pages": 812, "n_clicks": 455, "used": True,
                                   "estimated": [1.0, 0.52, 0.34, 0.26]}
    assert (champ["min_detectable_gain"], champ["gate_passed"]) == (0.0123, True)
    assert (latest["run_id"], latest["propensity"]["method"], latest["min_detectable_gain"]) == (
        latest_run, "regression_em", 0.0211)

    settings = Settings.load(storage_database_url=url)
    status_cmd.run(argparse.Namespace(json=True, runs=5), settings)
    doc = json.loads(capsys.readouterr().out)
    assert doc["position_bias"]["champion_run"]["propensity"]["estimated"] == [1.0, 0.52, 0.34, 0.26]
    status_cmd.run(argparse.Namespace(json=False, runs=5), settings)
    out = capsys.readouterr().out
    assert f"champion's run #{champ_run} (v0001 vs base): randomized over 812 pages" in out
    assert "propensity by position 1..: 1.00 0.52 0.34 0.26" in out
    assert "min detectable NDCG@10 gain 0.0123 (passed)" in out
    assert f"latest run #{latest_run} (v0002 vs v0001): regression_em over 1500 pages" in out
    assert "min detectable NDCG@10 gain 0.0211 (refused)" in out


def test_a_run_without_a_curve_says_so(db: tuple[str, Engine]) -> None:
    _, eng = db
    with session_scope(eng) as s:
        _run(s, "v0001", "base", None, 0.05, False, 0)
    pb = status_document(eng)["position_bias"]
    eng.dispose()
    assert pb["champion_run"] is None  # the champion is still base: it has no training run
    assert pb["latest_run"]["propensity"] is None and pb["latest_run"]["min_detectable_gain"] == 0.05
    lines = status_cmd.position_bias_lines(pb)
    assert lines[1].endswith("no propensity curve") and "0.0500 (refused)" in lines[2]
