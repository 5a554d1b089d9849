"""Heartbeats of a process's workers, and the liveness and readiness judged from them.

Each long-running worker (the ingest loop, the scheduler thread, the training coordinator, the scorer
worker, the control listener, the reconciler) owns a `Heartbeat`. It calls `beat()` whenever it makes
progress and `idle()` before it blocks waiting for work (a scorer with no requests, a reconciler
between two periods, a coordinator with no training): an idle worker cannot stall. Its thread runs
inside `guard()`, which records an exception that ends the thread.

The `Application` owns one `Health` per process, adopts the heartbeats of the workers it starts and
judges them (`report()`):

* **dead**: the worker's thread ended with an exception, or ended while the process was not shutting
  down. Nothing restarts a worker inside a process, so a dead worker makes the process **not live**
  (`/healthz` 503) and the Application exits non-zero for its supervisor to restart it.
* **stalled**: busy without a beat for longer than its deadline: **not ready** (`/readyz` 503). Past
  `max(deadline, RANKTUNE_LIVENESS_TIMEOUT_S)` it is judged stuck for good (kafka-python's `commit()`
  can hang past its timeout): **not live**, and the process exits as for a dead worker.
* **checks** are other readiness conditions (the scorer has loaded its model; the process is not
  starting or stopping); **details** add what an operator wants to read in `/readyz` (served
  version, control listener state, a degraded scorer) without deciding anything.

Heartbeat state is plain attribute writes (atomic under the GIL), so the hot paths pay two clock reads
per round, no lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

WorkerState = Literal["busy", "idle", "stalled", "dead", "stopped"]
Clock = Callable[[], float]

DEFAULT_DEADLINE_S = 120.0


class Heartbeat:
    """One worker's heartbeat; the worker owns it and beats from its own thread.

    `deadline_s`: how long the worker may be busy without a beat before it counts as stalled (None:
    never stalls, e.g. a worker that only waits). `alive`: an extra probe for a thread the worker does
    not run itself (apscheduler's); False counts as dead.
    """

    def __init__(self, name: str, *, deadline_s: float | None = DEFAULT_DEADLINE_S,
                 alive: Callable[[], bool] | None = None, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.deadline_s = deadline_s
        self._alive = alive
        self._clock = clock
        self._last = clock()
        self._idle = False
        self._error: str | None = None
        self._exited = False
        self.beats = 0

    def beat(self) -> None:
        """The worker made progress and is busy."""
        self._last = self._clock()
        self._idle = False
        self.beats += 1

    def idle(self) -> None:
        """The worker is about to wait for work; no deadline applies until its next `beat()`."""
        self._last = self._clock()
        self._idle = True
        self.beats += 1

    def died(self, exc: BaseException) -> None:
        self._error = f"{type(exc).__name__}: {exc}"

    def exited(self) -> None:
        self._exited = True

    def guard(self, fn: Callable[[], None], *, may_end: bool = False) -> Callable[[], None]:
        """`fn` as a thread target that records how the thread ends (an exception is logged, not raised).

        `may_end`: the worker runs one thread per task (the training coordinator), so a thread that
        returns is normal and only an exception counts."""

        def run() -> None:
            self.beat()
            try:
                fn()
            except BaseException as exc:  # the thread ends either way; record why
                self.died(exc)
                log.exception("worker %s died", self.name)
            else:
                if not may_end:
                    self._exited = True

        return run

    def status(self, now: float, *, shutting_down: bool = False) -> WorkerStatus:
        age = 0.0 if self._idle else max(0.0, now - self._last)
        if self._error is not None:
            return WorkerStatus(self.name, "dead", age, self.deadline_s, f"died: {self._error}")
        if self._exited or (self._alive is not None and not self._alive()):
            if shutting_down:
                return WorkerStatus(self.name, "stopped", age, self.deadline_s, None)
            return WorkerStatus(self.name, "dead", age, self.deadline_s, "its thread ended unexpectedly")
        if self._idle:
            return WorkerStatus(self.name, "idle", 0.0, self.deadline_s, None)
        if self.deadline_s is not None and age > self.deadline_s:
            return WorkerStatus(self.name, "stalled", age, self.deadline_s,
                                f"no heartbeat for {age:.0f}s (deadline {self.deadline_s:.0f}s)")
        return WorkerStatus(self.name, "busy", age, self.deadline_s, None)


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    state: WorkerState
    age_s: float  # busy without a beat for this long (0 while idle)
    deadline_s: float | None
    reason: str | None  # why the worker is not up

    @property
    def up(self) -> bool:
        return self.state in ("busy", "idle")

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "heartbeat_age_s": round(self.age_s, 3), "deadline_s": self.deadline_s,
                **({"reason": self.reason} if self.reason else {})}


@dataclass(frozen=True)
class HealthReport:
    """One judgement of every worker and check (what `/healthz`, `/readyz` and the metrics show)."""

    workers: tuple[WorkerStatus, ...]
    not_ready: tuple[str, ...]  # "name: reason" for each failed worker or check
    fatal: tuple[str, ...]  # "name: reason" for each worker that makes the process not live
    details: Mapping[str, Any] = field(default_factory=dict)
    degraded: Mapping[str, str | None] = field(default_factory=dict)  # component -> why (None: not degraded)

    @property
    def live(self) -> bool:
        return not self.fatal

    @property
    def ready(self) -> bool:
        return not self.not_ready


Check = Callable[[], str | None]
"""A readiness condition: None when it holds, else the reason it does not."""


class Health:
    """The registry of one process's heartbeats and readiness checks (owned by the `Application`)."""

    def __init__(self, *, liveness_timeout_s: float, clock: Clock = time.monotonic) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, Heartbeat] = {}
        self._checks: dict[str, Check] = {}
        self._details: dict[str, Callable[[], Any]] = {}
        self._degraded: dict[str, Callable[[], str | None]] = {}
        self._shutting_down = False

    def adopt(self, heartbeat: Heartbeat, *, deadline_s: float | Literal["keep"] | None = "keep") -> Heartbeat:
        """Judge `heartbeat` from now on (optionally with another deadline); names are unique."""
        if deadline_s != "keep":
            heartbeat.deadline_s = deadline_s
        with self._lock:
            if heartbeat.name in self._workers and self._workers[heartbeat.name] is not heartbeat:
                raise ValueError(f"a worker named {heartbeat.name!r} is already registered")
            self._workers[heartbeat.name] = heartbeat
        return heartbeat

    def add_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def add_detail(self, name: str, source: Callable[[], Any]) -> None:
        """Show `source()` under `name` in `/readyz` (None values are left out)."""
        with self._lock:
            self._details[name] = source

    def add_degraded(self, name: str, source: Callable[[], str | None]) -> None:
        """A component that can serve in a degraded mode: `source()` says why it is, or None. Degraded is
        shown (`/readyz` body, `ranktune_degraded`) but keeps the process ready: it still serves."""
        with self._lock:
            self._degraded[name] = source

    def shutting_down(self) -> None:
        """From now on, workers that end are stopped, not dead, and the process is not ready."""
        self._shutting_down = True

    @property
    def is_shutting_down(self) -> bool:
        return self._shutting_down

    def report(self) -> HealthReport:
        now = self._clock()
        with self._lock:
            workers, checks, details = list(self._workers.values()), dict(self._checks), dict(self._details)
            degraded_sources = dict(self._degraded)
        statuses = tuple(w.status(now, shutting_down=self._shutting_down) for w in workers)
        not_ready = [f"{s.name}: {s.reason}" for s in statuses if not s.up and s.state != "stopped"]
        fatal = [f"{s.name}: {s.reason}" for s in statuses if s.state == "dead"]
        fatal += [f"{s.name}: stuck, {s.reason}" for s in statuses
                  if s.state == "stalled" and s.age_s > max(s.deadline_s or 0.0, self.liveness_timeout_s)]
        for name, check in checks.items():
            try:
                problem = check()
            except Exception as exc:  # a probe must answer even when a check cannot be evaluated
                problem = f"check failed: {type(exc).__name__}: {exc}"
            if problem:
                not_ready.append(f"{name}: {problem}")
        if self._shutting_down:
            not_ready.append("process: shutting down")
        shown: dict[str, Any] = {}
        for name, source in details.items():
            try:
                value = source()
            except Exception as exc:
                value = f"unavailable ({type(exc).__name__})"
            if value is not None:
                shown[name] = value
        degraded: dict[str, str | None] = {}
        for name, why in degraded_sources.items():
            try:
                degraded[name] = why()
            except Exception as exc:
                degraded[name] = f"unknown ({type(exc).__name__})"
        return HealthReport(statuses, tuple(not_ready), tuple(fatal), shown, degraded)
