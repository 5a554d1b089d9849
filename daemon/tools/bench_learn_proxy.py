"""`ranktune bench learn --model proxy`: a cheap stand-in learner on the base's frozen embeddings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["ProxyModel"]


class ProxyModel:
    """The cheap stand-in learner (`--model proxy`): the residual design on frozen embeddings.

    score(q, d) = a * cos(q, d) + v . (dim * e_q * e_d), starting at a = 5, v = 0 (exactly the zero-shot
    ranking, like a fresh adapter), trained with the same losses, early stopping and gate as the adapter.
    It has no LoRA, so it learns less, but it costs only the base's cached embeddings: it lets the
    bench cover every shop and seed on a shared 2-core CPU where the adapter covers a few.
    """

    def __init__(self, embed: Callable[[Sequence[str]], Any]) -> None:
        """`embed(texts)`: unit-norm base embeddings, one row per text (`BenchScoring.embeddings`)."""
        import torch

        self.embed = embed
        dim = int(embed(["x"]).shape[1])
        self.dim = dim
        self.a = torch.tensor(5.0, requires_grad=True)
        self.v = torch.zeros(dim, requires_grad=True)

    def features(self, query: str, texts: Sequence[str]) -> Any:
        e = self.embed([query, *texts])
        return e[1:] * e[0] * self.dim  # entries of order 1, so Adam's steps move scores visibly

    def logits(self, feats: Any) -> Any:
        return self.a * feats.sum(dim=1) / self.dim + feats @ self.v

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.logits(self.features(query, texts)).numpy()

    def fit(self, splits: Any, cfg: Any, curve: Sequence[float] | None, epochs: int = 20) -> dict[str, Any]:
        """Adam (lr = cfg.learning_rate) over groups, 8 per step; holdout every `cfg.eval_every_steps` steps
        (IPS-NDCG with a curve), stop after `cfg.patience` evaluations without a gain of `cfg.min_delta` (the
        daemon's rule, `adapters.training.Stop`), keep the best."""
        import random

        import torch

        from adapters.dataset import NegativePool
        from adapters.ranking_metrics import evaluate_groups
        from adapters.training import Stop, batch_loss

        t0 = time.monotonic()
        rng = random.Random(cfg.seed)
        pool = NegativePool(splits.train)  # fixed negatives per group: features are computed once
        train = [pool.with_random_negatives(g, cfg.random_negatives, rng) for g in splits.train]
        feats = [self.features(g.query, g.texts) for g in train]
        opt = torch.optim.Adam([self.a, self.v], lr=cfg.learning_rate)

        def holdout() -> float:  # what early stopping reads: the selection slice when the split carved one
            return evaluate_groups(self.score, splits.selection or splits.holdout, propensity=curve,
                                   max_weight=cfg.ips_max_weight).ndcg10

        def snapshot() -> tuple[Any, Any]:
            return self.a.detach().clone(), self.v.detach().clone()

        stop = Stop(cfg, t0, None)  # only its patience rule: the stand-in has no budget or stop request
        best, best_state, best_step, step = holdout(), snapshot(), 0, 0
        for _ in range(epochs):
            order = list(range(len(feats)))
            rng.shuffle(order)
            for i in range(0, len(order), cfg.groups_per_step):
                idx = order[i : i + cfg.groups_per_step]
                loss = batch_loss([self.logits(feats[j]) for j in idx], [train[j] for j in idx], curve,
                                  cfg.ips_max_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step % cfg.eval_every_steps:
                    continue
                now = holdout()
                improved = now > best + cfg.min_delta
                if improved:
                    best, best_state, best_step = now, snapshot(), step
                if stop.after_eval(improved):
                    break
            if stop.reason is not None:
                break
        with torch.no_grad():
            self.a.copy_(best_state[0])
            self.v.copy_(best_state[1])
        return {"seconds": time.monotonic() - t0, "steps": step, "best_step": best_step,
                "residual_scale": float(self.a.detach())}
