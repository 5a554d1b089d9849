"""One training run of a LoRA adapter + head on query groups (no DB, no Kafka: the caller brings data).

The run evaluates the holdout before the first step and every `eval_every_steps`, keeps a copy of the
best adapter weights by holdout NDCG@10, and stops early after `patience` evaluations without a gain of
`min_delta`, at the wall-clock budget, or when `should_stop()` says so. Whatever ends it, the adapter is
left holding the best weights and the result carries them. Seeds fix every random choice.
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
from adapters.dataset import QueryGroup, Splits, truncate_group
from adapters.errors import NotEnoughData
from adapters.losses import get_loss, ips_listwise_terms, ips_weights
from adapters.ranker import Ranker
from adapters.ranking_metrics import EvalResult, evaluate_groups

__all__ = ["TrainResult", "seed_everything", "train"]

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
    With `cfg.residual_scale == "learn"` the weight of the zero-shot cosine is trained too (from
    `init_scale`, the warm start's weight, else 5); the best checkpoint's weight is set on the adapter.
    """
    started = time.monotonic()
    if len(data.train) < cfg.min_groups:
        raise NotEnoughData(f"{len(data.train)} training query groups; need at least {cfg.min_groups}")
    if not data.holdout:
        raise NotEnoughData("the holdout has no query groups")
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    ranker.new_adapter(adapter_name)
    if init_state is not None:
        ranker.load_state(adapter_name, init_state)
    if init_scale is not None and ranker.base.is_sentence_encoder:
        ranker.set_residual_scale(adapter_name, init_scale)  # the warm start's residual weight

    loss_fn = get_loss(cfg.loss)
    curve = list(propensity) if propensity is not None and cfg.debias == "ips" else None
    if curve is not None and cfg.loss != "listwise":
        raise ValueError("position-bias correction needs the listwise loss")

    def np_loss(scores: np.ndarray, labels: np.ndarray) -> float:
        return float(loss_fn(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels)))

    def evaluate(groups: list[QueryGroup]) -> EvalResult:
        return evaluate_groups(lambda q, t: ranker.score(q, t, adapter=adapter_name), groups, loss_fn=np_loss,
                               propensity=curve, max_weight=cfg.ips_max_weight)

    def emit(event: dict[str, Any]) -> None:
        if on_progress is not None:
            on_progress(event)

    steps_per_epoch = math.ceil(len(data.train) / cfg.groups_per_step)
    total_steps = cfg.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    step, pairs, train_seconds = 0, 0, 0.0
    early = budget = stopped = diverged = False
    losses_since_eval: list[float] = []

    learn_scale = cfg.residual_scale == "learn" and ranker.base.is_sentence_encoder
    # softplus(rho) = the residual weight; starts at the adapter's own weight (5 unless warm-started)
    start_scale = ranker.residual_scale(adapter_name) if ranker.base.is_sentence_encoder else 0.0
    rho = torch.tensor(math.log(math.expm1(max(start_scale, 1e-4))), requires_grad=True)

    def current_scale() -> float:
        return float(torch.nn.functional.softplus(rho.detach()))

    with ranker.training(adapter_name) as params:
        groups = _param_groups(ranker, params, cfg)
        if learn_scale:
            groups.append({"params": [rho], "weight_decay": 0.0, "lr": cfg.learning_rate * cfg.head_lr_scale})
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

        def record(epoch: int) -> EvalResult:
            if learn_scale:
                ranker.set_residual_scale(adapter_name, current_scale())
            ev = evaluate(data.holdout)
            entry = {
                "step": step,
                "epoch": epoch,
                "elapsed_s": round(time.monotonic() - started, 3),
                "lr": scheduler.get_last_lr()[0],
                "train_loss": float(np.mean(losses_since_eval)) if losses_since_eval else None,
                "holdout_ndcg10": ev.ndcg10,
                "holdout_mrr": ev.mrr,
                "holdout_auc": ev.auc,
                "holdout_loss": ev.loss,
                "residual_scale": current_scale() if learn_scale else None,
            }
            losses_since_eval.clear()
            history.append(entry)
            logger.info("train %s step %d/%d: holdout ndcg@10=%.4f loss=%s", adapter_name, step, total_steps,
                        ev.ndcg10, f"{ev.loss:.4f}" if ev.loss is not None else "n/a")
            emit({"event": "eval", "total_steps": total_steps, **entry})
            return ev

        best_eval = record(0)
        best_step, best_state = 0, ranker.adapter_state(adapter_name)
        best_scale = start_scale
        bad_evals = 0

        for epoch in range(cfg.epochs):
            order = list(range(len(data.train)))
            rng.shuffle(order)
            for start in range(0, len(order), cfg.groups_per_step):
                if time.monotonic() - started >= cfg.max_seconds:
                    budget = True
                    break
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                t_step = time.monotonic()
                batch = [truncate_group(data.train[i], cfg.max_items_per_group, rng)
                         for i in order[start : start + cfg.groups_per_step]]
                queries = [g.query for g in batch for _ in g.texts]
                texts = [t for g in batch for t in g.texts]
                if learn_scale:
                    head, cosine = ranker.train_parts(queries, texts)
                    logits = head if cosine is None else head + torch.nn.functional.softplus(rho) * cosine
                else:
                    logits = ranker.train_logits(queries, texts)
                per_group = torch.split(logits, [len(g) for g in batch])
                if curve is None:
                    loss = torch.stack([
                        loss_fn(s, torch.as_tensor(g.labels, device=s.device))
                        for s, g in zip(per_group, batch, strict=True)
                    ]).mean()
                else:
                    terms = [ips_listwise_terms(s, torch.as_tensor(g.labels, device=s.device),
                                                _weights(g, curve, cfg.ips_max_weight))
                             for s, g in zip(per_group, batch, strict=True)]
                    total = torch.stack([t for _, t in terms]).sum()
                    loss = torch.stack([n for n, _ in terms]).sum() / total.clamp(min=1e-9)
                if not torch.isfinite(loss):
                    diverged = True
                    logger.warning("train %s: non-finite loss at step %d; keeping the best checkpoint",
                                   adapter_name, step)
                    break
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                pairs += int(logits.numel())
                train_seconds += time.monotonic() - t_step
                losses_since_eval.append(float(loss.detach()))
                emit({"event": "step", "step": step, "total_steps": total_steps, "epoch": epoch,
                      "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                      "elapsed_s": time.monotonic() - started})

                if step % cfg.eval_every_steps == 0 or step == total_steps:
                    ev = record(epoch)
                    if ev.ndcg10 > best_eval.ndcg10 + cfg.min_delta:
                        best_eval, best_step, bad_evals = ev, step, 0
                        best_state = ranker.adapter_state(adapter_name)
                        best_scale = current_scale()
                    else:
                        bad_evals += 1
                        if bad_evals >= cfg.patience:
                            early = True
                            break
            if early or budget or stopped or diverged:
                break

    ranker.load_state(adapter_name, best_state)
    if ranker.base.is_sentence_encoder:
        ranker.set_residual_scale(adapter_name, best_scale)
    regression = evaluate(data.regression) if data.regression else None
    seconds = time.monotonic() - started
    result = TrainResult(
        adapter_name=adapter_name,
        state=best_state,
        best_step=best_step,
        steps=step,
        early_stopped=early,
        stopped_by_budget=budget,
        history=history,
        holdout=best_eval,
        regression=regression,
        examples_per_s=pairs / train_seconds if train_seconds > 0 else 0.0,
        seconds=seconds,
        stopped=stopped,
        diverged=diverged,
        train_groups=len(data.train),
        replay_count=data.replay_count,
        residual_scale=best_scale if ranker.base.is_sentence_encoder else None,
        propensity=curve,
    )
    emit({"event": "done", **result.summary()})
    logger.info("train %s done: %d steps, best step %d, holdout ndcg@10=%.4f, %.0f pairs/s, %.1fs",
                adapter_name, step, best_step, best_eval.ndcg10, result.examples_per_s, seconds)
    return result
