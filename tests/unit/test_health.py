"""daemon.health: how heartbeats are judged, with a fake clock; and what the probes and metrics say."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.health import Health, Heartbeat
from daemon.metrics import Metrics
from daemon.ops import probe_healthz, probe_readyz


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _health(clock: Clock, liveness: float = 60.0) -> Health:
    return Health(liveness_timeout_s=liveness, clock=clock)


def _samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_busy_worker_stalls_after_its_deadline_and_is_stuck_after_the_liveness_timeout(clock: Clock) -> None:
    health = _health(clock, liveness=60)
    hb = health.adopt(Heartbeat("ingest", deadline_s=10, clock=clock))
    hb.beat()
    clock.now += 9
    assert health.report().ready
    clock.now += 2  # 11 s without a beat
    report = health.report()
    assert not report.ready and report.live
    assert report.workers[0].state == "stalled" and "no heartbeat for 11s" in report.not_ready[0]
    hb.beat()  # it recovers by itself
    assert health.report().ready
    clock.now += 61  # past max(deadline, liveness): stuck for good
    report = health.report()
    assert not report.live and report.fatal[0].startswith("ingest: stuck")


def test_an_idle_worker_never_stalls(clock: Clock) -> None:
    health = _health(clock)
    hb = health.adopt(Heartbeat("scorer", deadline_s=1, clock=clock))
    hb.idle()
    clock.now += 3600
    report = health.report()
    assert report.ready and report.live
    assert report.workers[0].state == "idle" and report.workers[0].age_s == 0
    hb.beat()
    clock.now += 2
    assert health.report().workers[0].state == "stalled"


def test_a_worker_whose_thread_raises_is_dead_and_the_process_not_live(clock: Clock) -> None:
    health = _health(clock)
    hb = health.adopt(Heartbeat("control", clock=clock))

    def crash() -> None:
        raise TypeError("the JSON object must be str, bytes or bytearray, not NoneType")

    thread = threading.Thread(target=hb.guard(crash))
    thread.start()
    thread.join()
    report = health.report()
    assert not report.live and not report.ready
    assert report.fatal == ("control: died: TypeError: the JSON object must be str, bytes or bytearray, "
                            "not NoneType",)
    health.shutting_down()  # still dead: a crash is not a clean stop
    assert not health.report().live


def test_a_thread_that_returns_is_dead_unless_the_process_is_shutting_down(clock: Clock) -> None:
    health = _health(clock)
    hb = health.adopt(Heartbeat("reconciler", clock=clock))
    hb.guard(lambda: None)()
    assert health.report().fatal == ("reconciler: its thread ended unexpectedly",)
    health.shutting_down()
    report = health.report()
    assert report.live and report.workers[0].state == "stopped"
    assert report.not_ready == ("process: shutting down",)


def test_a_per_task_thread_may_end(clock: Clock) -> None:
    health = _health(clock)
    hb = health.adopt(Heartbeat("training", deadline_s=None, clock=clock))
    hb.guard(lambda: None, may_end=True)()
    hb.idle()
    assert health.report().live and health.report().ready


def test_an_alive_probe_that_fails_means_dead(clock: Clock) -> None:
    running = [True]
    health = _health(clock)
    health.adopt(Heartbeat("scheduler", deadline_s=60, alive=lambda: running[0], clock=clock))
    assert health.report().live
    running[0] = False
    assert health.report().fatal == ("scheduler: its thread ended unexpectedly",)


def test_checks_details_and_degraded(clock: Clock) -> None:
    health = _health(clock)
    loaded = [False]
    health.add_check("scorer", lambda: None if loaded[0] else "the model is not loaded")
    health.add_check("broken", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    health.add_detail("adapter_version", lambda: "v0003")
    health.add_degraded("scorer", lambda: "champion v0003 failed to load; serving base")
    status, body = probe_readyz(health)
    assert status == 503
    assert body["not_ready"] == ["scorer: the model is not loaded",
                                 "broken: check failed: ZeroDivisionError: division by zero"]
    assert body["error"]["code"] == "not_ready" and "the model is not loaded" in body["error"]["message"]
    health.add_check("broken", lambda: None)
    loaded[0] = True
    status, body = probe_readyz(health)
    assert status == 200 and body["status"] == "degraded" and body["adapter_version"] == "v0003"
    assert body["degraded"] == {"scorer": "champion v0003 failed to load; serving base"}
    assert probe_healthz(health) == (200, {"status": "alive"})


def test_names_are_unique(clock: Clock) -> None:
    health = _health(clock)
    health.adopt(Heartbeat("ingest", clock=clock))
    with pytest.raises(ValueError, match="ingest"):
        health.adopt(Heartbeat("ingest", clock=clock))


def test_metrics_say_which_worker(clock: Clock) -> None:
    health = _health(clock)
    metrics = Metrics()
    metrics.watch(health)
    ingest = health.adopt(Heartbeat("ingest", deadline_s=10, clock=clock))
    health.adopt(Heartbeat("scorer", deadline_s=30, clock=clock)).idle()
    health.add_degraded("scorer", lambda: None)
    ingest.beat()
    clock.now += 25
    up = _samples(metrics, "ranktune_worker_up")
    assert up == {(("worker", "ingest"),): 0.0, (("worker", "scorer"),): 1.0}
    age = _samples(metrics, "ranktune_worker_heartbeat_age_seconds")
    assert age == {(("worker", "ingest"),): 25.0, (("worker", "scorer"),): 0.0}
    assert _samples(metrics, "ranktune_worker_deadline_seconds")[(("worker", "ingest"),)] == 10.0
    assert _samples(metrics, "ranktune_process_ready") == {(): 0.0}
    assert _samples(metrics, "ranktune_process_live") == {(): 1.0}
    assert _samples(metrics, "ranktune_degraded") == {(("component", "scorer"),): 0.0}
