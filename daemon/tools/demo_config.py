"""The demo's shop, training budget, settings and shared state (read by `demo` and `demo_view`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.settings import Settings
from daemon.tools.broker import free_port
from daemon.tools.simulate import SimConfig

# The training budget of the demo's drift retrain. The end-to-end test (tests/integration/test_daemon.py)
# runs the same budget on the same shop and requires the promotion, so a change here is tested there.
# 520 result pages' worth of events (the newest ~6,200) give a holdout of ~80 pages, on which a real gain
# stands out from click noise. A training step sees 6 items of each page (its clicked ones and sampled
# others): half the compute of whole pages, and in the end-to-end test the same gain (+0.020 against
# +0.021 NDCG@10 on the click holdout; ground truth 0.592 -> 0.669 against 0.679). One epoch at lr 5e-4
# then takes about 4.5 minutes on 2 CPU cores.
CONTINUAL_TRAINING: dict[str, Any] = dict(
    model_max_seq_len=48, lora_r=8, lora_alpha=16, train_max_groups=520, train_epochs=1,
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
    # closed loop: the live scorer (`/v1/score`) orders every simulated page, as a shop's front end does, so
    # the clicks the daemon learns from are biased towards its own champion's order (False: the shop's
    # fixed lexical ranker orders the pages, the open-loop traffic of the end-to-end test)
    closed_loop: bool = True

    def __post_init__(self) -> None:
        """Refuse bad values before anything starts (ValueError): the simulator's, and the demo's own."""
        if not self.duration_s > 0:
            raise ValueError("duration must be > 0 seconds")
        if not self.eval_every_s > 0:
            raise ValueError("eval_every_s must be > 0")
        self.sim()

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
    pages: dict[str, Any] = field(default_factory=dict)  # closed loop: pages ordered by the scorer, per version
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
        storage_database_url=f"sqlite:///{(cfg.out / 'ranktune.db').resolve()}",
        storage_artifacts_dir=(cfg.out / "artifacts").resolve(),
        api_host="127.0.0.1", api_port=free_port(), api_token=secrets.token_urlsafe(16), ops_port=0,
        retrain_interval_s=600.0, retrain_min_events=6000, drift_interval_s=75.0, drift_cooldown_s=120.0,
        drift_window_events=3000, drift_min_events=600, **CONTINUAL_TRAINING,
        scorer_reconcile_interval_s=5.0, ingest_stats_interval_s=60.0,
        shutdown_grace_s=5.0, roles=["ingest", "scheduler", "serve"],
    )
    return base.replace(**overrides)
