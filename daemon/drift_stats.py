"""Drift statistics: PSI, Jensen-Shannon divergence, unseen shares, each with a small-sample noise floor.

Why noise floors: on windows of a few hundred events, two samples of the *same* distribution already
differ. PSI of two identical distributions sampled with n1 and n2 points has expectation about
(bins - 1) * (1/n1 + 1/n2), and term distributions are even noisier (many rare terms). A detector that
compares a raw statistic with the textbook threshold (PSI 0.2) fires on identical traffic. So each
statistic here comes with a floor measured on the data itself (the reference window split in two),
and a detector fires only when the statistic exceeds threshold + floor.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def terms(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of a query."""
    return _TOKEN.findall(text.lower())


def psi(reference: Sequence[float], recent: Sequence[float], bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of `recent` against `reference`, on reference-quantile bins."""
    ref = np.asarray(reference, dtype=float)
    rec = np.asarray(recent, dtype=float)
    if ref.size == 0 or rec.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, rec, side="right"), minlength=edges.size + 1) / rec.size
    p = np.clip(p, eps, None)
    q = np.clip(q, eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_floor(n_reference: int, n_recent: int, bins: int = 10) -> float:
    """Expected PSI between two samples of one distribution (chi-square approximation)."""
    if n_reference == 0 or n_recent == 0:
        return float("inf")
    return (bins - 1) * (1.0 / n_reference + 1.0 / n_recent)


def js_divergence(a: Counter[str], b: Counter[str]) -> float:
    """Jensen-Shannon divergence in bits (0 = same, 1 = disjoint) of two term-count distributions."""
    na, nb = sum(a.values()), sum(b.values())
    if na == 0 or nb == 0:
        return float("nan")
    keys = list(set(a) | set(b))
    p = np.array([a[k] / na for k in keys])
    q = np.array([b[k] / nb for k in keys])
    m = 0.5 * (p + q)

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / y[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def term_counts(queries: Iterable[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for q in queries:
        c.update(terms(q))
    return c


def unseen_shares(reference_queries: Sequence[str], reference_items: Iterable[str],
                  recent_queries: Sequence[str], recent_items: Sequence[str]) -> tuple[float, float]:
    """(share of recent events whose item was never seen, share whose query has an unseen term)."""
    seen_items = set(reference_items)
    seen_terms = set(term_counts(reference_queries))
    n = len(recent_queries)
    if n == 0:
        return float("nan"), float("nan")
    unseen_item = sum(1 for i in recent_items if i not in seen_items) / n
    unseen_term = sum(1 for q in recent_queries if any(t not in seen_terms for t in terms(q))) / n
    return unseen_item, unseen_term


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) in two halves (for noise floors)."""
    idx = np.random.default_rng(seed).permutation(n)
    return idx[: n // 2], idx[n // 2:]


def finite_or_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)
