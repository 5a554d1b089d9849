"""One training run of a LoRA adapter + head on query groups (no DB, no Kafka: the caller brings data).

The run evaluates the holdout (or the selection slice, when the split carved one) before the first step
and every `eval_every_steps`, keeps a copy of the best adapter weights by that NDCG@10, and stops early
after `patience` evaluations without a gain of `min_delta`, at the wall-clock budget, or when
`should_stop()` says so. Whatever ends it, the adapter is left holding the best weights and the result
carries them. Seeds fix every random choice.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from adapters.config import TrainConfig
from adapters.dataset import NegativePool, QueryGroup, Splits, truncate_group
from adapters.errors import NotEnoughData
from adapters.losses import GroupLoss, get_loss, ips_listwise_terms, ips_weights, listwise_loss
from adapters.ranker import Ranker
from adapters.ranking_metrics import EvalResult, evaluate_groups

__all__ = ["Stop", "TrainResult", "seed_everything", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train`: the best adapter weights and how the run went."""

    adapter_name: str
    state: dict[str, torch.Tensor] = field(repr=False)
    best_step: int
    steps: int
    early_stopped: bool
    stopped_by_budget: bool
    history: list[dict[str, Any]]
    holdout: EvalResult  # of the best checkpoint
    regression: EvalResult | None  # of the best checkpoint, when the data has a regression slice
    examples_per_s: float  # (query, item) pairs per second of optimisation, evaluation excluded
    seconds: float
    stopped: bool = False  # by should_stop()
    diverged: bool = False  # a non-finite loss ended the run
    train_groups: int = 0
    replay_count: int = 0
    residual_scale: float | None = None  # of the best checkpoint (sentence-encoder bases)
    propensity: list[float] | None = None  # the curve the run corrected with, when it did

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for logs, meta.json and the registry (no weights, no per-group lists)."""
        return {
            "adapter_name": self.adapter_name,
            "best_step": self.best_step,
            "steps": self.steps,
            "early_stopped": self.early_stopped,
            "stopped_by_budget": self.stopped_by_budget,
            "stopped": self.stopped,
            "diverged": self.diverged,
            "holdout": self.holdout.to_dict(),
            "regression": self.regression.to_dict() if self.regression else None,
            "examples_per_s": self.examples_per_s,
            "seconds": self.seconds,
            "train_groups": self.train_groups,
            "replay_count": self.replay_count,
            "residual_scale": self.residual_scale,
            "propensity": self.propensity,
        }


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _param_groups(ranker: Ranker, params: list[torch.nn.Parameter], cfg: TrainConfig) -> list[dict[str, Any]]:
    # No decay on biases and norms, as usual for AdamW. The head (peft's modules_to_save copies) learns
    # `head_lr_scale` times faster than LoRA: it starts at zero (figures in the README, "Cold start").
    names = {id(p): n for n, p in ranker.model.named_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in params:
        is_head = "modules_to_save" in names[id(p)]
        decays = p.ndim > 1 and "norm" not in names[id(p)].lower()
        groups.setdefault((is_head, decays), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decays else 0.0,
             "lr": cfg.learning_rate * (cfg.head_lr_scale if is_head else 1.0)}
            for (is_head, decays), ps in sorted(groups.items())]


def _weights(group: QueryGroup, curve: Sequence[float], max_weight: float) -> torch.Tensor:
    if group.positions is None:
        return torch.ones(len(group))
    return ips_weights(group.positions, curve, max_weight)


def batch_loss(scores: Sequence[torch.Tensor], groups: Sequence[QueryGroup], curve: Sequence[float] | None,
               max_weight: float, loss_fn: GroupLoss = listwise_loss
               ) -> torch.Tensor:
    """The loss of one step over `groups` (`scores[i]` scores `groups[i]`): the mean of `loss_fn` per group
    without a propensity curve; with one, the IPS-weighted listwise loss, numerators and weights summed
    over the batch (`ips_listwise_terms`)."""
    if curve is None:
        return torch.stack([loss_fn(s, torch.as_tensor(g.labels, device=s.device))
                            for s, g in zip(scores, groups, strict=True)]).mean()
    terms = [ips_listwise_terms(s, torch.as_tensor(g.labels, device=s.device), _weights(g, curve, max_weight))
             for s, g in zip(scores, groups, strict=True)]
    return torch.stack([n for n, _ in terms]).sum() / torch.stack([t for _, t in terms]).sum().clamp(min=1e-9)


class Stop:
    """The one stop condition of a run: why it ended (`reason`), checked before each step and after each
    evaluation. Reasons: "budget" (wall clock), "stopped" (`should_stop()`), "early" (patience ran out),
    "diverged" (non-finite loss); None while the run goes on or when the epochs ran out."""

    def __init__(self, cfg: TrainConfig, started: float, should_stop: Callable[[], bool] | None) -> None:
        self.cfg, self.started, self.should_stop = cfg, started, should_stop
        self.reason: str | None = None
        self.bad_evals = 0

    def before_step(self) -> bool:
        """True (and `reason` set) when the budget is spent or the caller asks to stop."""
        if time.monotonic() - self.started >= self.cfg.max_seconds:
            self.reason = "budget"
        elif self.should_stop is not None and self.should_stop():
            self.reason = "stopped"
        return self.reason is not None

    def after_eval(self, improved: bool) -> bool:
        """Count evaluations without improvement; True (reason "early") once `patience` is reached."""
        self.bad_evals = 0 if improved else self.bad_evals + 1
        if self.bad_evals >= self.cfg.patience:
            self.reason = "early"
        return self.reason is not None

    def diverged(self) -> None:
        self.reason = "diverged"


@dataclass
class _Best:
    """The best checkpoint so far (by holdout NDCG@10)."""

    eval: EvalResult
    step: int
    state: dict[str, torch.Tensor]
    scale: float


class _Run:
    """The state of one `train` call, split into steps that each fit on a screen."""

    def __init__(self, ranker: Ranker, data: Splits, cfg: TrainConfig, adapter_name: str,
                 on_progress: Callable[[dict[str, Any]], None] | None, propensity: Sequence[float] | None) -> None:
        self.ranker, self.data, self.cfg, self.name = ranker, data, cfg, adapter_name
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.rng = random.Random(cfg.seed)
        self.negatives = NegativePool(data.train)
        self.loss_fn = get_loss(cfg.loss)
        self.curve = list(propensity) if propensity is not None and cfg.debias == "ips" else None
        if self.curve is not None and cfg.loss != "listwise":
            raise ValueError("position-bias correction needs the listwise loss")
        self.total_steps = cfg.epochs * math.ceil(len(data.train) / cfg.groups_per_step)
        self.history: list[dict[str, Any]] = []
        self.step, self.pairs, self.train_seconds = 0, 0, 0.0
        self.losses_since_eval: list[float] = []
        self.learn_scale = cfg.residual_scale == "learn" and ranker.base.is_sentence_encoder
        # softplus(rho) = the residual weight; starts at the adapter's own weight (5 unless warm-started)
        self.start_scale = ranker.residual_scale(adapter_name) if ranker.base.is_sentence_encoder else 0.0
        self.rho = torch.tensor(math.log(math.expm1(max(self.start_scale, 1e-4))), requires_grad=True)

    def scale(self) -> float:
        return float(torch.nn.functional.softplus(self.rho.detach()))

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_progress is not None:
            self.on_progress(event)

    def evaluate(self, groups: Sequence[QueryGroup]) -> EvalResult:
        def np_loss(scores: np.ndarray, labels: np.ndarray) -> float:
            return float(self.loss_fn(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels)))

        return evaluate_groups(lambda q, t: self.ranker.score(q, t, adapter=self.name), groups, loss_fn=np_loss,
                               propensity=self.curve, max_weight=self.cfg.ips_max_weight)

    def record(self, epoch: int, lr: float) -> EvalResult:
        """Evaluate what early stopping reads now (the selection slice, else the holdout), log it and add it
        to the history (its NDCG@10 under `holdout_ndcg10`, `selected_on` naming the set)."""
        if self.learn_scale:
            self.ranker.set_residual_scale(self.name, self.scale())
        ev = self.evaluate(self.data.selection or self.data.holdout)
        entry = {
            "step": self.step, "epoch": epoch, "elapsed_s": round(time.monotonic() - self.started, 3), "lr": lr,
            "train_loss": float(np.mean(self.losses_since_eval)) if self.losses_since_eval else None,
            "holdout_ndcg10": ev.ndcg10, "holdout_mrr": ev.mrr, "holdout_auc": ev.auc, "holdout_loss": ev.loss,
            "residual_scale": self.scale() if self.learn_scale else None,
            "selected_on": "selection" if self.data.selection else "holdout",
        }
        self.losses_since_eval.clear()
        self.history.append(entry)
        logger.info("train %s step %d/%d: holdout ndcg@10=%.4f loss=%s", self.name, self.step, self.total_steps,
                    ev.ndcg10, f"{ev.loss:.4f}" if ev.loss is not None else "n/a")
        self.emit({"event": "eval", "total_steps": self.total_steps, **entry})
        return ev

    def batch_loss(self, batch: list[QueryGroup]) -> tuple[torch.Tensor, int]:
        """The step's loss over `batch` (IPS-weighted listwise with a curve) and its number of pairs."""
        queries = [g.query for g in batch for _ in g.texts]
        texts = [t for g in batch for t in g.texts]
        if self.learn_scale:
            head, cosine = self.ranker.train_parts(queries, texts)
            logits = head if cosine is None else head + torch.nn.functional.softplus(self.rho) * cosine
        else:
            logits = self.ranker.train_logits(queries, texts)
        per_group = torch.split(logits, [len(g) for g in batch])
        return batch_loss(per_group, batch, self.curve, self.cfg.ips_max_weight, self.loss_fn), int(logits.numel())

    def optimise(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 scheduler: Any, batch: list[QueryGroup], epoch: int) -> bool:
        """One optimisation step; False (nothing applied) when the loss is not finite."""
        t_step = time.monotonic()
        loss, pairs = self.batch_loss(batch)
        if not torch.isfinite(loss):
            logger.warning("train %s: non-finite loss at step %d; keeping the best checkpoint", self.name, self.step)
            return False
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.pairs += pairs
        self.train_seconds += time.monotonic() - t_step
        self.losses_since_eval.append(float(loss.detach()))
        self.emit({"event": "step", "step": self.step, "total_steps": self.total_steps, "epoch": epoch,
                   "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                   "elapsed_s": time.monotonic() - self.started})
        return True

    def loop(self, params: list[torch.nn.Parameter], stop: Stop) -> _Best:
        """Epochs of shuffled steps with periodic evaluation; returns the best checkpoint."""
        cfg = self.cfg
        groups = _param_groups(self.ranker, params, cfg)
        if self.learn_scale:
            groups.append({"params": [self.rho], "weight_decay": 0.0, "lr": cfg.learning_rate * cfg.head_lr_scale})
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * self.total_steps),
                                                    self.total_steps)
        best = _Best(self.record(0, scheduler.get_last_lr()[0]), 0, self.ranker.adapter_state(self.name),
                     self.start_scale)
        for epoch in range(cfg.epochs):
            order = list(range(len(self.data.train)))
            self.rng.shuffle(order)
            for start in range(0, len(order), cfg.groups_per_step):
                if stop.before_step():
                    return best
                pages = [self.data.train[i] for i in order[start : start + cfg.groups_per_step]]
                batch = [self.negatives.with_random_negatives(
                    truncate_group(page, cfg.max_items_per_group, self.rng), cfg.random_negatives, self.rng, page)
                    for page in pages]
                if not self.optimise(params, optimizer, scheduler, batch, epoch):
                    stop.diverged()
                    return best
                if self.step % cfg.eval_every_steps == 0 or self.step == self.total_steps:
                    ev = self.record(epoch, scheduler.get_last_lr()[0])
                    improved = ev.ndcg10 > best.eval.ndcg10 + cfg.min_delta
                    if improved:
                        best = _Best(ev, self.step, self.ranker.adapter_state(self.name), self.scale())
                    if stop.after_eval(improved):
                        return best
        return best

    def result(self, best: _Best, stop: Stop) -> TrainResult:
        """Leave the adapter on its best weights, evaluate the holdout (when a selection slice chose the
        checkpoint) and the regression slice, and sum the run up."""
        self.ranker.load_state(self.name, best.state)
        if self.ranker.base.is_sentence_encoder:
            self.ranker.set_residual_scale(self.name, best.scale)
        holdout = self.evaluate(self.data.holdout) if self.data.selection else best.eval
        regression = self.evaluate(self.data.regression) if self.data.regression else None
        return TrainResult(
            adapter_name=self.name, state=best.state, best_step=best.step, steps=self.step,
            early_stopped=stop.reason == "early", stopped_by_budget=stop.reason == "budget", history=self.history,
            holdout=holdout, regression=regression,
            examples_per_s=self.pairs / self.train_seconds if self.train_seconds > 0 else 0.0,
            seconds=time.monotonic() - self.started, stopped=stop.reason == "stopped",
            diverged=stop.reason == "diverged", train_groups=len(self.data.train),
            replay_count=self.data.replay_count,
            residual_scale=best.scale if self.ranker.base.is_sentence_encoder else None, propensity=self.curve,
        )


def train(
    ranker: Ranker,
    data: Splits,
    cfg: TrainConfig,
    *,
    adapter_name: str,
    init_state: dict[str, torch.Tensor] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    propensity: Sequence[float] | None = None,
    init_scale: float | None = None,
) -> TrainResult:
    """Train a new adapter `adapter_name` in `ranker` and return its best checkpoint.

    `init_state` warm-starts from another adapter's weights (the champion's); without it LoRA and head
    start fresh. The adapter stays loaded in the ranker with the best weights (not active); the
    previously active adapter stays active. `on_progress` gets a dict per step ({"event": "step", ...})
    and per evaluation ({"event": "eval", ...}). Raises NotEnoughData with fewer than `cfg.min_groups`
    training groups or an empty holdout.

    With a `propensity` curve (relative examination per 0-based position, `adapters.propensity`) and
    `cfg.debias == "ips"`, the loss is the inverse-propensity-weighted listwise loss over each step's
    groups (`losses.ips_listwise_terms`, clipped at `cfg.ips_max_weight`; groups without positions weigh
    their clicks 1), and early stopping selects by IPS-NDCG@10 on the holdout instead of click NDCG, which
    favours whatever copies the order the clicks were collected under. `result.holdout` is then debiased.
    With `data.selection` (`SplitConfig.selection_fraction`), early stopping reads that slice and
    `result.holdout` is the chosen checkpoint's one evaluation on the holdout: the gate's side carries no
    best-of-several selection.
    With `cfg.residual_scale == "learn"` the weight of the zero-shot cosine is trained too (from
    `init_scale`, the warm start's weight, else 5); the best checkpoint's weight is set on the adapter.
    """
    if len(data.train) < cfg.min_groups:
        raise NotEnoughData(f"{len(data.train)} training query groups; need at least {cfg.min_groups}")
    if not data.holdout:
        raise NotEnoughData("the holdout has no query groups")
    seed_everything(cfg.seed)
    ranker.new_adapter(adapter_name)
    if init_state is not None:
        ranker.load_state(adapter_name, init_state)
    if init_scale is not None and ranker.base.is_sentence_encoder:
        ranker.set_residual_scale(adapter_name, init_scale)  # the warm start's residual weight
    run = _Run(ranker, data, cfg, adapter_name, on_progress, propensity)
    stop = Stop(cfg, run.started, should_stop)
    with ranker.training(adapter_name) as params:
        best = run.loop(params, stop)
    result = run.result(best, stop)
    run.emit({"event": "done", **result.summary()})
    logger.info("train %s done: %d steps, best step %d, holdout ndcg@10=%.4f, %.0f pairs/s, %.1fs",
                adapter_name, result.steps, best.step, result.holdout.ndcg10, result.examples_per_s, result.seconds)
    return result
