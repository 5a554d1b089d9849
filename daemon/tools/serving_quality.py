"""Ranking quality of a scoring function on the simulator's ground truth (serving paths are compared by it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from adapters.ranking_metrics import ndcg_at_k
from daemon.tools.simulate import SimConfig, eval_judgements

ScorePairs = Callable[[Sequence[tuple[str, str]]], np.ndarray]


def judgements(seed: int = 7, n_items: int = 300, n_queries: int = 40, candidates: int = 30) -> list[dict[str, Any]]:
    """Graded queries of both simulator phases (pre and post drift)."""
    cfg = SimConfig(seed=seed, n_items=n_items)
    return [q for phase in ("pre", "post") for q in eval_judgements(cfg, phase, n_queries, candidates)]


def judged_ndcg(score: Callable[[str, Sequence[str]], Any], judged: Sequence[dict[str, Any]], k: int = 10
                ) -> list[float]:
    """NDCG@k of `score(query, texts)`'s ranking of every judged query's items, one value per query."""
    return [ndcg_at_k(np.asarray(score(q["query"], [it["text"] for it in q["items"]])),
                      [it["grade"] for it in q["items"]], k) for q in judged]


def per_query_ndcg(score: ScorePairs, judged: Sequence[dict[str, Any]], k: int = 10) -> np.ndarray:
    """`judged_ndcg` for a scorer of (query, text) pairs."""
    return np.asarray(judged_ndcg(lambda q, texts: score([(q, t) for t in texts]), judged, k), dtype=np.float64)
