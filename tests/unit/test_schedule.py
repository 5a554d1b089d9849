"""Single-flight training coordination and the drift cooldown."""

from __future__ import annotations

import threading
import time

from daemon.training.schedule import RetrainScheduler, TrainingCoordinator


class GatedCycle:
    """A training cycle that blocks until released, recording the triggers it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, trigger: str) -> str:
        self.ran.append(trigger)
        self.entered.release()
        assert self.release.wait(10)
        return "succeeded"


def test_burst_of_triggers_gives_one_run_then_one_queued_run():
    cycle = GatedCycle()
    coord = TrainingCoordinator(cycle, drift_cooldown_s=0)
    answers = [coord.request("schedule")]
    assert cycle.entered.acquire(timeout=5)
    answers += [coord.request(t) for t in ("drift", "manual", "schedule", "drift")]
    assert answers == ["started", "queued", "dropped", "dropped", "dropped"]
    cycle.release.set()
    assert coord.wait_idle(10)
    assert cycle.ran == ["schedule", "drift"]
    assert coord.state.history == [("schedule", "succeeded"), ("drift", "succeeded")]
    assert coord.state.started == 2 and coord.state.dropped == 3


def test_drift_cooldown_blocks_a_second_drift_run_but_not_others():
    now = [1000.0]
    cycle = GatedCycle()
    cycle.release.set()
    coord = TrainingCoordinator(cycle, drift_cooldown_s=600, clock=lambda: now[0])
    assert coord.request("drift") == "started"
    assert coord.wait_idle(5)
    now[0] += 599
    assert coord.request("drift") == "cooldown"
    assert coord.request("schedule") == "started"
    assert coord.wait_idle(5)
    now[0] += 2
    assert coord.request("drift") == "started"
    assert coord.wait_idle(5)
    assert cycle.ran == ["drift", "schedule", "drift"]


def test_a_raising_cycle_does_not_wedge_the_coordinator():
    calls: list[str] = []

    def boom(trigger: str) -> str:
        calls.append(trigger)
        raise RuntimeError("training exploded")

    coord = TrainingCoordinator(boom, drift_cooldown_s=0)
    assert coord.request("manual") == "started"
    assert coord.wait_idle(5)
    assert coord.request("manual") == "started"
    assert coord.wait_idle(5)
    assert calls == ["manual", "manual"] and coord.state.history[-1] == ("manual", "error")


def test_closed_coordinator_refuses_and_drops_the_queue():
    cycle = GatedCycle()
    coord = TrainingCoordinator(cycle, drift_cooldown_s=0)
    coord.request("schedule")
    assert cycle.entered.acquire(timeout=5)
    assert coord.request("drift") == "queued"
    coord.close()
    assert coord.request("manual") == "closed"
    cycle.release.set()
    assert coord.wait_idle(5)
    assert cycle.ran == ["schedule"]


def test_scheduler_runs_jobs_on_their_intervals():
    hits = {"retrain": 0, "drift": 0}

    def retrain() -> None:
        hits["retrain"] += 1

    def drift() -> None:
        hits["drift"] += 1

    sched = RetrainScheduler(retrain_job=retrain, drift_job=drift, retrain_interval_s=0.2, drift_interval_s=0.3)
    sched.start()
    try:
        assert set(sched.next_run_times()) == {"retrain", "drift"}
        time.sleep(1.1)
    finally:
        sched.shutdown()
    assert hits["retrain"] >= 3 and hits["drift"] >= 2


def test_a_drift_trigger_takes_over_a_queued_scheduled_run():
    cycle = GatedCycle()
    coord = TrainingCoordinator(cycle, drift_cooldown_s=0)
    assert coord.request("schedule") == "started"
    assert cycle.entered.acquire(timeout=5)
    assert coord.request("schedule") == "queued"
    assert coord.request("drift") == "queued"  # relabelled, not dropped
    assert coord.request("drift") == "dropped"
    cycle.release.set()
    assert coord.wait_idle(10)
    assert cycle.ran == ["schedule", "drift"]
    assert coord.state.last_drift_start is not None
