"""Retrain scheduling: a single-flight coordinator and the apscheduler (3.x) jobs that feed it.

At most one training runs at a time. A trigger that arrives during a run is remembered (once) and runs
after it; further triggers during that run are dropped with a log line. Drift triggers respect a
cooldown so a persistent drift signal cannot cause a retraining storm.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler

from daemon.health import Heartbeat

log = logging.getLogger(__name__)


@dataclass
class CoordinatorState:
    running: str | None = None  # trigger of the run in progress
    queued: str | None = None  # trigger remembered for after it
    started: int = 0
    dropped: int = 0
    last_drift_start: float | None = None  # monotonic time of the last drift-triggered run
    history: list[tuple[str, str]] = field(default_factory=list)  # (trigger, outcome)


class TrainingCoordinator:
    """Runs `run_cycle(trigger)` on its own thread, one at a time, with one queued follow-up."""

    def __init__(self, run_cycle: Callable[[str], str], *, drift_cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._run_cycle = run_cycle
        self._cooldown = drift_cooldown_s
        self._clock = clock
        self._lock = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.state = CoordinatorState()
        # idle without a training; busy (deadline set by the Application) while one runs
        self.heartbeat = Heartbeat("training", deadline_s=None)
        self.heartbeat.idle()

    def request(self, trigger: str) -> str:
        """Ask for a run. Returns started | queued | dropped | cooldown | closed.

        A drift trigger takes over a queued scheduled run (one run follows either way).
        """
        with self._lock:
            if self._closed:
                return "closed"
            if trigger == "drift" and self._in_cooldown():
                log.info("drift trigger ignored: cooldown of %.0fs not over", self._cooldown)
                return "cooldown"
            if self.state.running is None:
                self._start(trigger)
                return "started"
            if self.state.queued is None:
                self.state.queued = trigger
                log.info("training %s running; %s trigger queued to run after it", self.state.running, trigger)
                return "queued"
            if trigger == "drift" and self.state.queued == "schedule":
                # The queued run trains on the same newest data either way; naming it after the drift
                # keeps the record honest and starts the drift cooldown when it runs.
                self.state.queued = "drift"
                log.info("queued schedule run relabelled as a drift run")
                return "queued"
            self.state.dropped += 1
            log.info("training running and one queued already; %s trigger dropped", trigger)
            return "dropped"

    def _in_cooldown(self) -> bool:
        last = self.state.last_drift_start
        return last is not None and self._clock() - last < self._cooldown

    def _start(self, trigger: str) -> None:
        self.state.running = trigger
        self.state.started += 1
        if trigger == "drift":
            self.state.last_drift_start = self._clock()
        self.heartbeat.beat()
        self._thread = threading.Thread(target=self.heartbeat.guard(functools.partial(self._worker, trigger),
                                                                    may_end=True),
                                        name=f"training-{trigger}", daemon=True)
        self._thread.start()

    def _worker(self, trigger: str) -> None:
        while True:
            try:
                outcome = self._run_cycle(trigger)
            except Exception:  # the cycle records its own failures; this only keeps the loop alive
                log.exception("training cycle (%s) raised", trigger)
                outcome = "error"
            with self._lock:
                self.state.history.append((trigger, outcome))
                nxt = self.state.queued
                self.state.queued = None
                if nxt is None or self._closed:
                    self.state.running = None
                    self.heartbeat.idle()
                    self._lock.notify_all()
                    return
                trigger = nxt
                self.heartbeat.beat()
                self.state.running = trigger
                self.state.started += 1
                if trigger == "drift":
                    self.state.last_drift_start = self._clock()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self.state.running is not None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress (True) or the timeout passes (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.state.running is None, timeout)

    def close(self) -> None:
        """Accept no new triggers and forget a queued one; a running cycle is left to finish."""
        with self._lock:
            self._closed = True
            self.state.queued = None


class RetrainScheduler:
    """Owns the apscheduler BackgroundScheduler with the retrain and drift jobs."""

    def __init__(self, *, retrain_job: Callable[[], None], drift_job: Callable[[], None],
                 retrain_interval_s: float, drift_interval_s: float, heartbeat_s: float = 5.0) -> None:
        self._scheduler = BackgroundScheduler(timezone="UTC")
        # a job of its own beats: proof that apscheduler's thread still dispatches jobs
        self.heartbeat = Heartbeat("scheduler", deadline_s=12 * heartbeat_s,
                                   alive=lambda: bool(self._scheduler.running))
        job_opts = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        self._scheduler.add_job(self.heartbeat.beat, "interval", seconds=heartbeat_s, id="heartbeat",
                                name="heartbeat", **job_opts)
        self._scheduler.add_job(_logged(retrain_job), "interval", seconds=retrain_interval_s, id="retrain",
                                name="retrain", **job_opts)
        self._scheduler.add_job(_logged(drift_job), "interval", seconds=drift_interval_s, id="drift",
                                name="drift", **job_opts)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop scheduling new jobs; waits for a job function in progress (not for the training it began)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def next_run_times(self) -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs() if job.id != "heartbeat"}


def _logged(fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("scheduled job %s failed", getattr(fn, "__name__", fn))

    run.__name__ = getattr(fn, "__name__", "job")
    return run
