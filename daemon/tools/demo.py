"""`ranktune demo`: the whole loop on one machine, watched live.

Starts the embedded broker (tansu), runs the daemon (all roles, SQLite) in this process, and produces
simulated shop traffic with a drift point. While it runs, it measures NDCG@10 of the served model
against the simulator's hidden ground truth, through the real HTTP API, before and after each swap.
At the end it prints a summary and writes `report.json` and `ndcg_drift.png` to the output folder.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from adapters.ranking_metrics import ndcg_at_k
from daemon.settings import Settings
from daemon.tools.broker import EmbeddedBroker, free_port
from daemon.tools.sim_output import produce_kafka
from daemon.tools.simulate import SimConfig, eval_judgements, generate

if TYPE_CHECKING:
    from daemon.app import Application

log = logging.getLogger(__name__)


# The training budget of the demo's drift retrain. The end-to-end test (tests/integration/test_daemon.py)
# runs the same budget on the same shop and requires the promotion, so a change here is tested there.
# 520 result pages' worth of events (the newest ~6,200) give a holdout of ~80 pages, on which a real gain
# stands out from click noise. A training step sees 6 items of each page (its clicked ones and sampled
# others): half the compute of whole pages, and in the end-to-end test the same gain (+0.020 against
# +0.021 NDCG@10 on the click holdout; ground truth 0.592 -> 0.669 against 0.679). One epoch at lr 5e-4
# then takes about 4.5 minutes on 2 CPU cores.
CONTINUAL_TRAINING: dict[str, Any] = dict(
    max_seq_len=48, lora_r=8, lora_alpha=16, train_max_groups=520, train_epochs=1,
    train_groups_per_step=8, train_eval_every_steps=15, train_learning_rate=5e-4, train_max_items_per_group=6,
    train_max_seconds=420,
)


@dataclass(frozen=True)
class DemoConfig:
    """The simulated shop of the end-to-end test, produced live: 18,000 events at 250/s, drift at 40%."""

    out: Path = Path("demo-output")
    duration_s: float = 660.0
    seed: int = 9
    n_items: int = 120
    n_events: int = 18000
    events_per_s: float = 250.0
    drift_at: float = 0.4
    eval_queries: int = 24
    eval_candidates: int = 20
    eval_every_s: float = 60.0

    def sim(self) -> SimConfig:
        """The simulated shop (its traffic and its ground-truth judgements) this demo produces."""
        return SimConfig(seed=self.seed, n_items=self.n_items, n_events=self.n_events, drift_at=self.drift_at,
                         events_per_s=self.events_per_s)


@dataclass
class DemoState:
    """What the live view shows; written by the demo threads, read by the view."""

    started: float = field(default_factory=time.monotonic)
    produced: int = 0
    drift_produced_at: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # t, version, ndcg_pre, ndcg_post
    swaps: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def demo_settings(base: Settings, cfg: DemoConfig, bootstrap: str) -> Settings:
    """The user's settings with what the demo must own: its broker, its SQLite file, short intervals.

    Timeline at the defaults: the traffic lasts 72 s with the drift point at 29 s, and the drift job, every
    75 s, first runs about 70 s in, when the post-drift traffic is (nearly) all stored: the drift retrain
    then trains on the data the end-to-end test trains on. The scheduled retrain waits 10 minutes and needs
    6,000 new events, so it neither starts a run on pre-drift data that the drift retrain would queue
    behind (one training at a time: that cost earlier demo runs 5 minutes) nor retrains on the few events
    left after the drift run's cutoff.
    """
    overrides: dict[str, Any] = dict(
        kafka_bootstrap=bootstrap, kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=1000,
        kafka_max_poll_interval_ms=60000, kafka_topic_partitions=1,
        database_url=f"sqlite:///{(cfg.out / 'ranktune.db').resolve()}",
        artifacts_dir=(cfg.out / "artifacts").resolve(),
        api_host="127.0.0.1", api_port=free_port(), api_token=secrets.token_urlsafe(16),
        retrain_interval_s=600.0, retrain_min_events=6000, drift_interval_s=75.0, drift_cooldown_s=120.0,
        drift_window_events=3000, drift_min_events=600, **CONTINUAL_TRAINING,
        reconcile_interval_s=5.0, stats_interval_s=60.0,
        shutdown_grace_s=5.0, roles=["ingest", "scheduler", "serve"],
    )
    return base.model_copy(update=overrides)


class ShopEvaluator:
    """NDCG@10 of whatever the API serves, on the simulator's judged queries (pre- and post-drift)."""

    def __init__(self, cfg: DemoConfig, url: str) -> None:
        sim = cfg.sim()
        self.queries = {phase: eval_judgements(sim, phase, n_queries=cfg.eval_queries, candidates=cfg.eval_candidates)
                        for phase in ("pre", "post")}
        self.client = httpx.Client(base_url=url, timeout=120)

    def measure(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        versions = set()
        for phase, queries in self.queries.items():
            ndcgs = []
            for q in queries:
                items = [{"item_id": i["item_id"], "text": i["text"]} for i in q["items"]]
                body = {"query": q["query"], "items": items}
                resp = self.client.post("/v1/score", json=body)
                resp.raise_for_status()
                doc = resp.json()
                versions.add(doc["adapter_version"])
                grade = {i["item_id"]: i["grade"] for i in q["items"]}
                ranked = doc["items"]
                scores = np.arange(len(ranked), 0, -1, dtype=float)  # served order -> descending scores
                ndcgs.append(ndcg_at_k(scores, [grade[r["item_id"]] for r in ranked], 10))
            out[f"ndcg_{phase}"] = float(np.mean(ndcgs))
        out["version"] = ",".join(sorted(versions))
        return out

    def close(self) -> None:
        self.client.close()


def run_demo(cfg: DemoConfig, settings: Settings, *, stop: threading.Event, live: bool = True) -> dict[str, Any]:
    from daemon.app import Application
    from daemon.tools.demo_view import DemoView, write_outputs

    if cfg.out.exists():
        for name in ("ranktune.db", "ranktune.db-wal", "ranktune.db-shm", "artifacts"):
            target = cfg.out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    state = DemoState()
    with EmbeddedBroker(log_file=cfg.out / "tansu.log") as broker:
        s = demo_settings(settings, cfg, broker.bootstrap)
        app = Application(s)
        app.on_training_progress = lambda msg: state.training.update(msg)
        app_thread = threading.Thread(target=app.run, kwargs={"install_signals": False}, name="ranktune-app",
                                      daemon=True)
        app_thread.start()
        if not app.started.wait(180) or app.serve is None:
            app.stop()
            raise RuntimeError("the daemon did not start within 180 s: see the log above")
        evaluator = ShopEvaluator(cfg, app.serve.url)
        producer = threading.Thread(target=_produce, args=(cfg, s, state, stop), name="demo-traffic", daemon=True)
        producer.start()
        view = DemoView(state, app, cfg)
        try:
            _watch(cfg, state, app, evaluator, view, stop, live)
        finally:
            stop.set()
            state.done = True
            producer.join(10)
            evaluator.close()
            app.stop()
            app_thread.join(120)
        report = write_outputs(state, app, cfg, s)
    return report


def _produce(cfg: DemoConfig, settings: Settings, state: DemoState, stop: threading.Event) -> None:
    def records() -> Any:
        for rec in generate(cfg.sim()):
            if stop.is_set():
                return
            if rec.phase == "post" and state.drift_produced_at is None:
                state.drift_produced_at = state.elapsed()
            state.produced += 1
            yield rec

    try:
        produce_kafka(records(), settings, events_per_s=cfg.events_per_s)
    except Exception:
        log.exception("demo traffic stopped")


def _watch(cfg: DemoConfig, state: DemoState, app: Application, evaluator: ShopEvaluator, view: Any,
           stop: threading.Event, live: bool) -> None:
    next_eval = 0.0
    served = None
    deadline = time.monotonic() + cfg.duration_s
    with view.live(enabled=live):
        while not stop.is_set() and time.monotonic() < deadline:
            assert app.serve is not None and app.serve.scorer is not None
            version = app.serve.scorer.version
            if version != served:
                if served is not None:
                    state.swaps.append({"t": state.elapsed(), "from": served, "to": version})
                served = version
                next_eval = 0.0  # measure right after every swap
            if time.monotonic() >= next_eval:
                state.evaluations.append({"t": state.elapsed(), **evaluator.measure()})
                next_eval = time.monotonic() + cfg.eval_every_s
            view.refresh()
            stop.wait(1.0)
