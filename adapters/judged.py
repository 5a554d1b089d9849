"""Human-judged query sets: read them, and score a model on them (the core of `ranktune eval --judgements`).

A judged file holds graded (query, item) pairs, in either format:

* JSONL: one object per line, either a pair `{"query", "item_id", "text", "grade"}` or a whole query
  `{"query", "items": [{"item_id", "text", "grade"}, ...]}` (the simulator's `judgements` format);
* TSV: columns `query, item_id, text, grade`, tab-separated, with or without that header line.

Grades are non-negative integers (0 = irrelevant; NDCG gain `2^grade - 1`). Pairs are grouped by exact query
text in file order. A query whose items all share one grade ranks nothing and is skipped (as in training).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters.ranking_metrics import mrr, ndcg_at_k

__all__ = ["JudgedQuery", "JudgedResult", "evaluate_judged", "read_judgements"]

_COLUMNS = ("query", "item_id", "text", "grade")


@dataclass(frozen=True)
class JudgedQuery:
    query: str
    item_ids: tuple[str, ...]
    texts: tuple[str, ...]
    grades: tuple[int, ...]


@dataclass(frozen=True)
class JudgedResult:
    """Means over judged queries, each with a `confidence` bootstrap interval over queries."""

    ndcg10: float
    ndcg10_ci: tuple[float, float]
    mrr: float
    mrr_ci: tuple[float, float]
    n_queries: int
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grade(value: Any, where: str) -> int:
    try:
        g = int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: grade {value!r} is not a number") from None
    if g < 0:
        raise ValueError(f"{where}: grade {g} is negative")
    return g


def _rows(path: Path) -> list[tuple[str, str, str, int]]:
    rows: list[tuple[str, str, str, int]] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            items: Sequence[Mapping[str, Any]] = obj.get("items", [obj])
            for it in items:
                rows.append((str(obj["query"]), str(it["item_id"]), str(it["text"]),
                             _grade(it["grade"], f"{path}:{n}")))
        return rows
    for n, rec in enumerate(csv.reader(text.splitlines(), delimiter="\t"), 1):
        if not rec or (n == 1 and tuple(c.strip().lower() for c in rec[:4]) == _COLUMNS):
            continue
        if len(rec) < 4:
            raise ValueError(f"{path}:{n}: expected 4 tab-separated columns (query, item_id, text, grade)")
        rows.append((rec[0], rec[1], rec[2], _grade(rec[3], f"{path}:{n}")))
    return rows


def read_judgements(path: str | Path) -> list[JudgedQuery]:
    """Judged queries of a JSONL or TSV file (by suffix: .jsonl/.json/.ndjson, anything else is TSV)."""
    by_query: dict[str, list[tuple[str, str, int]]] = {}
    for q, item, text, grade in _rows(Path(path)):
        by_query.setdefault(q, []).append((item, text, grade))
    return [JudgedQuery(q, tuple(i for i, _, _ in its), tuple(t for _, t, _ in its), tuple(g for _, _, g in its))
            for q, its in by_query.items()]


def _ci(values: np.ndarray, samples: int, confidence: float, rng: np.random.Generator) -> tuple[float, float]:
    if values.size == 0:
        return (0.0, 0.0)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return (float(lo), float(hi))


def evaluate_judged(
    score_fn: Callable[[str, Sequence[str]], Any],
    judged: Sequence[JudgedQuery],
    *,
    k: int = 10,
    samples: int = 1000,
    confidence: float = 0.9,
    seed: int = 0,
) -> JudgedResult:
    """NDCG@k and MRR (first item with grade > 0) of `score_fn(query, texts)`, with bootstrap intervals."""
    ndcgs, mrrs, skipped = [], [], 0
    for jq in judged:
        if len(set(jq.grades)) < 2:
            skipped += 1
            continue
        scores = np.asarray(score_fn(jq.query, list(jq.texts)), dtype=np.float64)
        ndcgs.append(ndcg_at_k(scores, jq.grades, k))
        mrrs.append(mrr(scores, jq.grades))
    rng = np.random.default_rng(seed)
    n, m = np.asarray(ndcgs), np.asarray(mrrs)
    return JudgedResult(
        ndcg10=float(n.mean()) if n.size else 0.0, ndcg10_ci=_ci(n, samples, confidence, rng),
        mrr=float(m.mean()) if m.size else 0.0, mrr_ci=_ci(m, samples, confidence, rng),
        n_queries=int(n.size), n_skipped=skipped,
    )
