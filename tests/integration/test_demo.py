"""`ranktune demo`, shortened: broker, daemon and the closed-loop shop, through the CLI (real processes'
worth of threads: the embedded tansu, the daemon's roles, the traffic producer and the evaluator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.broker, pytest.mark.slow]


@pytest.mark.timeout(400)
def test_short_demo_runs_closed_loop_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--duration", "45", "--events", "1500", "--rate", "100", "--out", str(out), "--no-live"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["closed_loop"] is True
    pages = report["pages_ordered"]
    # every page the shop showed was ordered by the live scorer (the retrieval order only when a request
    # timed out on a loaded machine) ...
    assert pages["scored"] > 20 and pages.get("fallback", 0) <= pages["scored"] // 20, pages
    assert set(pages["by_version"]) == {"base"}, pages  # ... the zero-shot champion: no promotion in 45 s
    # records produced: feedback events and the catalogue; ingest stores them as they come
    assert report["events_produced"] > 1000 and 0 < report["ingest"]["stored"] <= report["events_produced"]
    evals = report["evaluations"]
    assert evals and all(0.0 < e["ndcg_pre"] <= 1.0 for e in evals)
    assert (out / "ndcg_drift.png").stat().st_size > 0
