"""`ranktune demo`: the whole loop on one machine, watched live.

Starts the embedded broker (tansu), runs the daemon (all roles, SQLite) in this process, and produces
simulated shop traffic with a drift point. While it runs, it measures NDCG@10 of the served model
against the simulator's hidden ground truth, through the real HTTP API, before and after each swap.
At the end it prints a summary and writes `report.json` and `ndcg_drift.png` to the output folder.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from adapters.ranking_metrics import ndcg_at_k
from daemon.settings import Settings
from daemon.tools.broker import EmbeddedBroker
from daemon.tools.closed_loop import ScorerOrder
from daemon.tools.demo_config import DemoConfig, DemoState, demo_settings
from daemon.tools.sim_output import produce_kafka
from daemon.tools.simulate import eval_judgements, generate

if TYPE_CHECKING:
    from daemon.app import Application

log = logging.getLogger(__name__)


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
        producer = threading.Thread(target=_produce, args=(cfg, s, state, stop, app.serve.url), name="demo-traffic",
                                    daemon=True)
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


def _produce(cfg: DemoConfig, settings: Settings, state: DemoState, stop: threading.Event, url: str) -> None:
    """Produce the shop's traffic; closed loop (`cfg.closed_loop`), the scorer at `url` orders every page."""
    order = ScorerOrder(url) if cfg.closed_loop else None

    def records() -> Any:
        for rec in generate(cfg.sim(), order):
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
    finally:
        if order is not None:
            state.pages = {**order.counts, "by_version": dict(order.versions)}
            order.close()


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
