"""Metrics and logs from every role, against the real broker: an ingest-only process is observable on its
ops port, and what real processes export covers every name the alert rules and the dashboard use."""

from __future__ import annotations

import json
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from daemon.app import Application
from daemon.tools.broker import EmbeddedBroker, free_port
from tests.fixtures.ingest import IngestCase, IngestProcess, simulate, valid_ids, wait_until
from tests.fixtures.observability import (
    PROMETHEUS_SERIES,
    alert_exprs,
    dashboard_exprs,
    exported_names,
    scrape,
    used_names,
)
from tests.fixtures.scoring import SPEC_KW

pytestmark = [pytest.mark.integration, pytest.mark.broker]

_OPS_URL = re.compile(r"ops endpoints \(/metrics, /healthz, /readyz\) on (http://127\.0\.0\.1:\d+)")


def _ops_url(proc: IngestProcess) -> str:
    found = wait_until(lambda: _OPS_URL.search(proc.log()) or proc.proc.poll() is not None, 60, "the ops port")
    assert proc.proc.poll() is None, proc.log()[-3000:]
    return str(found.group(1))


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported")


def _reasons(text: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in re.finditer(r'^ranktune_ingest_deadlettered_total\{reason="([^"]+)"\} (\S+)$', text, flags=re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


@pytest.mark.timeout(180)
def test_an_ingest_only_process_answers_on_the_ops_port(broker: EmbeddedBroker,
                                                        ingest_case: Callable[..., IngestCase], tmp_path: Path):
    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'ranktune.db'}", log_format="json")
    records = simulate(800, malformed_rate=0.05, seed=3)
    bad = [r for r in records if r.kind == "malformed"]
    case.create_topics()
    case.produce(records)
    proc = case.start("ingest")
    url = _ops_url(proc)
    expected = valid_ids(records)
    wait_until(lambda: case.count() >= len(expected), 90, "every valid event stored")
    wait_until(lambda: _value(scrape(url), "ranktune_ingest_consumed_total") >= len(records), 30, "all consumed")

    text = scrape(url)
    consumed = _value(text, "ranktune_ingest_consumed_total")
    stored, duplicates = _value(text, "ranktune_ingest_stored_total"), _value(text, "ranktune_ingest_duplicates_total")
    reasons = _reasons(text)
    assert consumed == len(records) == stored + duplicates + sum(reasons.values())
    dead = case.topic_records(case.settings.kafka.deadletter_topic, len(bad))
    assert reasons == Counter(dict(d.headers)["reason"].decode() for d in dead)  # what the topic says, by reason
    assert sum(reasons.values()) == len(bad) and {r.split(":")[0] for r in reasons} >= {"not_json", "schema"}
    assert _value(text, 'ranktune_worker_up{worker="ingest"}') == 1.0
    assert _value(text, 'ranktune_process_info{roles="ingest"}') == 1.0
    assert _value(text, "ranktune_process_ready") == 1.0
    assert "ranktune_ready" not in text and "ranktune_training" not in text  # no scorer, no training here

    ready = httpx.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200 and set(ready.json()["workers"]) == {"ingest"}, ready.text
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "alive"}

    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.log()[-3000:]
    lines = [json.loads(line) for line in proc.log().splitlines() if line.strip()]  # one JSON object a line
    assert len(lines) > 5 and {x["role"] for x in lines} == {"ingest"}
    assert any(x["message"].startswith("ingest stopped: consumed=") for x in lines)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_role_exports_what_the_alerts_and_the_dashboard_use(broker: EmbeddedBroker,
                                                                  ingest_case: Callable[..., IngestCase],
                                                                  tmp_path: Path):
    case = ingest_case(broker.bootstrap, f"sqlite:///{tmp_path / 'ranktune.db'}", api_port=free_port(),
                       storage_artifacts_dir=tmp_path / "artifacts", retrain_interval_s=3600, drift_interval_s=3600,
                       scorer_reconcile_interval_s=3600,  # no periodic sync resets the degraded note set below
                       kafka_control_topic=f"{tmp_path.name[-20:]}.control",
                       **{f"model_{k}": v for k, v in SPEC_KW.items()})
    case.create_topics()
    app = Application(case.settings)
    thread = threading.Thread(target=app.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        assert app.started.wait(180), "the daemon did not start"
        assert app.ops is not None and app.serve is not None
        api = app.serve.url
        wait_until(lambda: httpx.get(f"{app.ops.url}/readyz", timeout=5).status_code == 200, 60, "ready")
        ops_text, api_text = scrape(app.ops.url), scrape(api)
        exported = exported_names(ops_text)
        assert exported == exported_names(api_text)  # one Metrics per process, on both ports

        alerts = used_names(alert_exprs())
        dashboard = used_names(dashboard_exprs())
        assert len(alerts) > 15 and len(dashboard) > 30
        assert alerts - PROMETHEUS_SERIES <= exported, sorted(alerts - exported)
        assert dashboard <= exported, sorted(dashboard - exported)

        ops_ready, api_ready = (httpx.get(f"{u}/readyz", timeout=5).json() for u in (app.ops.url, api))
        workers = {"ingest", "scheduler", "training", "scorer", "reconciler", "control", "http"}
        assert set(ops_ready["workers"]) == set(api_ready["workers"]) == workers
        assert ops_ready["adapter_version"] == api_ready["adapter_version"] == "base"
        assert ops_ready["control"] in ("connecting", "listening")
        assert 'ranktune_drift_threshold{statistic="score_psi"} 0.2' in ops_text
        assert 'ranktune_champion_info{version="base"} 1.0' in ops_text

        # a scorer that fell back to the base (`Scorer.degraded`, set when the champion's artifact is corrupt)
        app.serve.scorer.degraded = "champion v0007 failed its checksum; serving base"  # type: ignore[union-attr]
        for url in (app.ops.url, api):
            body = httpx.get(f"{url}/readyz", timeout=5)
            assert body.status_code == 200 and body.json()["status"] == "degraded", body.text
            assert body.json()["degraded"] == {"scorer": "champion v0007 failed its checksum; serving base"}
        assert 'ranktune_degraded{component="scorer"} 1.0' in scrape(app.ops.url)
    finally:
        app.stop()
        thread.join(120)
    assert app.exit_code == 0
