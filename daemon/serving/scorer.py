"""The live scorer: one worker thread owns the model; requests are micro-batched across callers.

Callers `submit` (query, text) pairs and get a `Future[ScoreResult]`. The worker takes the first
waiting request, waits up to `max_wait_ms` (counted from that request's arrival) for more, and packs
whole requests into one round of at most `max_batch` pairs (a single larger request is a round of its
own, scored in `max_batch`-sized forwards). A request is never split across rounds, so every pair of
one request is scored by the same adapter version, and `ScoreResult.version` names it.

Hot-swap: `swap_to(version)` reads and checksum-verifies the artifact in the *calling* thread, then
hands the weights to the worker, which between two rounds stages them under a new adapter name,
probes them, activates them and deletes the old adapter (see `adapters.swap`). A refused version
raises `SwapRefused` in the caller; the worker keeps serving what it served.

On a fast serving path (`fast` given: `scorer.serving_path` merged-int8 / merged-bf16 / merged-fp32,
`adapters.fast`) the calling thread also builds and probes the merged model while the worker keeps serving,
and the worker only replaces its reference between two rounds. Either way `swap_to` returns only after the
worker switched, so every request submitted after it returns is scored by the new version (read-your-writes
for promote).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from adapters.artifacts import LoadedAdapter
from adapters.config import BaseIdentity
from adapters.errors import SwapRefused
from adapters.fast import FAST_PATHS, FastBase, FastModel, resolve_serving_path
from adapters.ranker import Ranker
from adapters.swap import BASE, PROBE_PAIRS, AdapterSwapper, Staged
from daemon.errors import DaemonError, Overloaded
from daemon.health import Heartbeat
from daemon.metrics import Metrics
from daemon.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[str], LoadedAdapter]
"""Reads and verifies one version's artifact (e.g. `control.registered_loader`); runs off the worker."""

Pair = tuple[str, str]


class ScorerUnavailable(DaemonError, RuntimeError):
    """The scorer is not started, not ready yet, or stopping."""


class ScoreTimeout(DaemonError, TimeoutError):
    """A request waited longer than `scorer_request_timeout_s` for its scores."""


@dataclass(frozen=True)
class ScoreResult:
    """Scores in request order and the adapter version that produced all of them."""

    scores: np.ndarray
    version: str
    queue_s: float  # arrival -> its round started
    model_s: float  # the round's model time (shared by every request in the round)
    round_pairs: int  # pairs in the round (this request and its batch-mates)


@dataclass(frozen=True)
class SwapResult:
    version: str
    changed: bool  # False when `version` was already served
    seconds: float
    prepare_s: float = 0.0  # of `seconds`: loading, verifying and (fast path) building, while the old one served


@dataclass
class _Request:
    pairs: list[Pair]
    future: Future[ScoreResult]
    arrived: float


@dataclass
class _SwapJob:
    version: str
    loaded: LoadedAdapter | None
    built: FastModel | None = None  # fast path: the model to serve, built off the worker
    future: Future[Staged] = field(default_factory=Future)


class Scorer:
    """Owns `ranker` from `start()` on: nothing else may call it while the worker runs."""

    def __init__(
        self,
        ranker: Ranker,
        *,
        loader: Loader,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        queue_size: int = 1024,
        metrics: Metrics | None = None,
        probe_pairs: Sequence[Pair] = PROBE_PAIRS,
        swap_timeout_s: float = 120.0,
        fast: FastBase | None = None,
    ) -> None:
        self._swapper = AdapterSwapper(ranker, probe_pairs)
        self._probe_pairs = list(probe_pairs)
        self._fast = fast
        self._live: FastModel | None = fast.build(BASE, {}, {}) if fast is not None else None
        self._built: dict[str, FastModel] = {}  # fast path: the served and the previous version (rollback)
        self._loader = loader
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics or Metrics()
        self.swap_timeout_s = swap_timeout_s
        self._cond = threading.Condition()
        self._requests: deque[_Request] = deque()
        self._swaps: deque[_SwapJob] = deque()
        self._swap_lock = threading.Lock()
        self._stopping = False
        self._ready = False
        self._thread: threading.Thread | None = None
        self.degraded: str | None = None
        """Why the scorer does not serve the registry's champion (set by the reconciler), or None."""
        self.transitions: deque[tuple[float, str]] = deque([(time.monotonic(), BASE)], maxlen=10000)
        """(time.monotonic(), version) each time the served version changed; for tests and the bench."""
        self.metrics.set_active(BASE)
        # busy = a round or a swap in hand; a hung forward or swap stalls it
        self.heartbeat = Heartbeat("scorer", deadline_s=swap_timeout_s)

    @classmethod
    def from_settings(cls, ranker: Ranker, settings: Settings, *, loader: Loader,
                      metrics: Metrics | None = None) -> Scorer:
        path = resolve_serving_path(settings.scorer.serving_path, ranker.device)
        fast = (FastBase(ranker, settings.model, path, batch_size=settings.scorer.max_batch)
                if path in FAST_PATHS else None)
        return cls(ranker, loader=loader, max_batch=settings.scorer.max_batch, fast=fast,
                   max_wait_ms=settings.scorer.max_wait_ms, queue_size=settings.scorer.queue_size, metrics=metrics)

    def direct(self) -> Callable[[Sequence[Pair]], np.ndarray]:
        """The served version's scoring function, called directly (benchmarks' floor, while the scorer idles)."""
        live = self._live
        if live is not None:
            return live.score_pairs
        ranker = self._swapper.ranker
        return lambda pairs: ranker.score_pairs(pairs)

    @property
    def base_identity(self) -> BaseIdentity:
        """The base and quantization this scorer runs (`adapters.config.BaseIdentity`): it serves only adapters
        trained on them."""
        return self._swapper.ranker.base.identity

    @property
    def serving_path(self) -> str:
        """`quantized`, or the fast path (`merged-int8`, `merged-bf16`, `merged-fp32`) this scorer runs."""
        return self._fast.path if self._fast is not None else "quantized"

    # ----- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker. Requests are accepted once `mark_ready()` was called."""
        if self._thread is not None:
            raise ScorerUnavailable("scorer already started")
        self._thread = threading.Thread(target=self.heartbeat.guard(self._run), name="ranktune-scorer", daemon=True)
        self._thread.start()

    def mark_ready(self) -> None:
        """Declare the scorer ready (after the initial reconcile): `submit` accepts requests from now on."""
        self._ready = True
        self.metrics.ready.set(1)

    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping and self._thread is not None and self._thread.is_alive()

    @property
    def version(self) -> str:
        """The version served now (`base` = no adapter)."""
        live = self._live
        return live.version if live is not None else self._swapper.served.version

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting; the worker finishes the round in hand, then fails what is still queued."""
        with self._cond:
            self._stopping = True
            self._ready = False
            self._cond.notify_all()
        self.metrics.ready.set(0)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("scorer worker did not stop within %.0fs", timeout_s)

    # ----- requests --------------------------------------------------------------------------------

    def submit(self, pairs: Sequence[Pair]) -> Future[ScoreResult]:
        """Queue `pairs` for scoring; raises Overloaded when the queue is full, ScorerUnavailable if not ready."""
        if not self.ready:
            raise ScorerUnavailable("the scorer is not ready (model loading, or stopping)")
        req = _Request(list(pairs), Future(), time.monotonic())
        if not req.pairs:
            req.future.set_result(ScoreResult(np.zeros(0, np.float32), self.version, 0.0, 0.0, 0))
            return req.future
        with self._cond:
            if len(self._requests) >= self.queue_size:
                raise Overloaded(f"scorer queue is full ({self.queue_size} requests waiting); retry later")
            self._requests.append(req)
            self.metrics.queue_depth.set(len(self._requests))
            self._cond.notify()
        return req.future

    def score(self, query: str, texts: Sequence[str], timeout_s: float | None = None) -> ScoreResult:
        """Blocking convenience: scores of `texts` for `query`."""
        fut = self.submit([(query, t) for t in texts])
        try:
            return fut.result(timeout_s)
        except TimeoutError:
            fut.cancel()
            raise ScoreTimeout(f"no scores within {timeout_s}s") from None

    # ----- swaps -----------------------------------------------------------------------------------

    def swap_to(self, version: str) -> SwapResult:
        """Serve `version` (`base` = no adapter) from the next round on; raise SwapRefused if it cannot.

        Loading and checksum verification run here, in the caller's thread; one swap at a time. A swap that
        the worker has not taken up within `swap_timeout_s` is withdrawn (ScorerUnavailable): it never
        applies later.
        """
        with self._swap_lock:
            t0 = time.monotonic()
            if version == self.version:
                return SwapResult(version, False, 0.0)
            if self._thread is None or not self._thread.is_alive() or self._stopping:
                raise ScorerUnavailable(f"cannot swap to {version}: the scorer is not running")
            try:
                loaded = None if version == BASE else self._loader(version)
            except Exception as exc:
                self._refused(version, exc)
                raise SwapRefused(f"version {version} refused: {exc}") from exc
            try:
                built = self._prepare(version, loaded)
            except SwapRefused as exc:
                self._refused(version, exc)
                raise
            prepared = time.monotonic() - t0
            job = _SwapJob(version, loaded, built)
            with self._cond:
                self._swaps.append(job)
                self._cond.notify()
            try:
                try:
                    job.future.result(self.swap_timeout_s)
                except TimeoutError:
                    # Still queued: withdraw it, or it would apply later, after the caller was told it failed
                    # and perhaps after a newer swap (a reconcile back to the champion would find nothing to do).
                    if job.future.cancel():
                        raise ScorerUnavailable(f"swap to {version} not done within {self.swap_timeout_s}s; "
                                                "withdrawn, still serving " + self.version) from None
                    job.future.result()  # the worker took it up just now: it ends between two batches
            except SwapRefused as exc:
                self._refused(version, exc)
                raise
            seconds = time.monotonic() - t0
            self.metrics.swaps.labels(outcome="ok").inc()
            self.metrics.swap_duration.observe(seconds)
            return SwapResult(version, True, seconds, prepared)

    def _prepare(self, version: str, loaded: LoadedAdapter | None) -> FastModel | None:
        """Fast path: build and probe `version`'s merged model here, while the worker serves the old one."""
        if self._fast is None:
            return None
        built = self._built.get(version)
        if built is None:
            built = self._fast.build(version, loaded.state if loaded else {}, loaded.peft_config if loaded else {})
            built.probe(self._probe_pairs)
        served = self.version
        self._built = {v: m for v, m in self._built.items() if v == served}
        self._built[version] = built
        return built

    def _refused(self, version: str, exc: BaseException) -> None:
        self.metrics.swaps.labels(outcome="refused").inc()
        log.error("swap to %s refused, still serving %s: %s", version, self.version, exc)

    # ----- worker ----------------------------------------------------------------------------------

    def _run(self) -> None:
        log.info("scorer worker started (max_batch=%d, max_wait=%.1fms)", self.max_batch, self.max_wait_s * 1e3)
        while True:
            job, batch = self._next_work()
            if job is not None:
                self._do_swap(job)
            elif batch:
                self._do_round(batch)
            else:
                break
        self._fail_pending(ScorerUnavailable("the scorer is stopping"))
        log.info("scorer worker stopped")

    def _next_work(self) -> tuple[_SwapJob | None, list[_Request]]:
        """Block for a swap job or a round of requests; (None, []) means stop."""
        with self._cond:
            if not self._requests and not self._swaps and not self._stopping:
                self.heartbeat.idle()
            while not self._requests and not self._swaps and not self._stopping:
                self._cond.wait()
            self.heartbeat.beat()
            if self._swaps:
                return self._swaps.popleft(), []
            if self._stopping:
                return None, []
            deadline = self._requests[0].arrived + self.max_wait_s
            while not self._swaps and not self._stopping:
                queued = sum(len(r.pairs) for r in self._requests)
                left = deadline - time.monotonic()
                if queued >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Request] = []
            total = 0
            while self._requests and (not batch or total + len(self._requests[0].pairs) <= self.max_batch):
                req = self._requests.popleft()
                if req.future.set_running_or_notify_cancel():  # False: the caller gave up (timeout)
                    batch.append(req)
                    total += len(req.pairs)
            self.metrics.queue_depth.set(len(self._requests))
            return None, batch

    def _do_round(self, batch: list[_Request]) -> None:
        pairs = [p for r in batch for p in r.pairs]
        start = time.monotonic()
        live = self._live
        version = live.version if live is not None else self._swapper.served.version
        try:
            scores = live.score_pairs(pairs) if live is not None else self._swapper.ranker.score_pairs(pairs)
        except Exception as exc:
            log.exception("scoring a round of %d pairs (%d requests) failed", len(pairs), len(batch))
            for r in batch:
                r.future.set_exception(exc)
            return
        model_s = time.monotonic() - start
        self.metrics.batch_size.observe(len(pairs))
        i = 0
        for r in batch:
            n = len(r.pairs)
            r.future.set_result(ScoreResult(scores[i:i + n], version, start - r.arrived, model_s, len(pairs)))
            i += n

    def _do_swap(self, job: _SwapJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if job.built is not None:  # fast path: built and probed already; switching is one assignment
            self._live = job.built
            self._switched(job, Staged(job.version, None))
            return
        try:
            if job.loaded is None:
                staged = self._swapper.swap(job.version, {}, {})
            else:
                staged = self._swapper.swap(job.version, job.loaded.state, job.loaded.peft_config)
        except SwapRefused as exc:
            job.future.set_exception(exc)
            return
        except Exception as exc:  # never let a swap kill the worker
            log.exception("swap to %s failed unexpectedly", job.version)
            job.future.set_exception(SwapRefused(f"version {job.version} refused: {exc}"))
            return
        self._switched(job, staged)

    def _switched(self, job: _SwapJob, staged: Staged) -> None:
        self.transitions.append((time.monotonic(), job.version))
        self.metrics.set_active(job.version)
        job.future.set_result(staged)

    def _fail_pending(self, exc: Exception) -> None:
        with self._cond:
            requests, swaps = list(self._requests), list(self._swaps)
            self._requests.clear()
            self._swaps.clear()
            self.metrics.queue_depth.set(0)
        for r in requests:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(exc)
        for j in swaps:
            if j.future.set_running_or_notify_cancel():
                j.future.set_exception(exc)
