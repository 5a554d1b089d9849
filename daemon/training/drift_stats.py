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
from collections.abc import Callable, Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def terms(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of a query."""
    return _TOKEN.findall(text.lower())


def psi(reference: Sequence[float] | np.ndarray, recent: Sequence[float] | np.ndarray, bins: int = 10,
        eps: float = 1e-4) -> float:
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


def finite_or_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)


def null_floor(stat: Callable[[np.ndarray, np.ndarray], float], units: Sequence[str], n_recent: int,
               n_recent_units: int, *, splits: int = 20, z: float = 2.0, seed: int = 0) -> float:
    """What `stat(reference, recent)` reaches without drift: mean + z * sd over null comparisons.

    Each null comparison splits the reference's rows by *unit* (a result page) into a slice the size
    of the recent window (at most half the pages) and the rest, and rescales `stat(rest, slice)` (row
    indices) from the two parts' sizes to the real windows' by (1/n1 + 1/n2), the way the sampling
    noise of PSI and of a plug-in JS divergence shrinks. Splitting by page matters: a page's rows share
    one query and similar scores, so the independent units are pages, and a small recent window of a
    few pages is far noisier than its row count suggests; the sd term covers that.
    """
    names = sorted(set(units))
    k = min(n_recent_units, len(names) // 2)
    if k == 0 or n_recent == 0:
        return float("inf")
    pos = {u: i for i, u in enumerate(names)}
    unit_index = np.array([pos[u] for u in units])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(splits):
        in_slice = np.zeros(len(names), dtype=bool)
        in_slice[rng.choice(len(names), k, replace=False)] = True
        mask = in_slice[unit_index]
        a, b = np.flatnonzero(~mask), np.flatnonzero(mask)
        scale = (1.0 / len(units) + 1.0 / n_recent) / (1.0 / a.size + 1.0 / b.size)
        values.append(stat(a, b) * scale)
    return float(np.mean(values) + z * np.std(values))


def loo_unseen_shares(queries: Sequence[str], items: Sequence[str], units: Sequence[str]) -> tuple[float, float]:
    """Leave-one-page-out `unseen_shares` of a window against itself: the share of rows whose item,
    or whose query terms, no *other* page of the window has.

    This estimates (Good-Turing style) the unseen shares a new window from the same distribution
    would show against this whole window. Half-against-half would measure them against a reference
    of half the size, which sees fewer items and terms, and overstate them (0.39 vs 0.24 for terms
    on simulated traffic of 2000 events).
    """
    n = len(queries)
    if n == 0:
        return float("nan"), float("nan")
    item_pages: dict[str, set[str]] = {}
    term_pages: dict[str, set[str]] = {}
    for q, item, unit in zip(queries, items, units, strict=True):
        item_pages.setdefault(item, set()).add(unit)
        for t in terms(q):
            term_pages.setdefault(t, set()).add(unit)
    # seen elsewhere = some page other than this row's own has it
    unseen_item = sum(1 for item, u in zip(items, units, strict=True) if item_pages[item] == {u}) / n
    unseen_term = sum(
        1 for q, u in zip(queries, units, strict=True) if any(term_pages[t] == {u} for t in terms(q))
    ) / n
    return unseen_item, unseen_term


def share_floor(share: float, n_units: int, z: float = 2.0) -> float:
    """`share` plus z binomial standard errors over `n_units` pages (a page's rows share one query)."""
    if n_units == 0 or math.isnan(share):
        return float("inf")
    return share + z * math.sqrt(share * (1.0 - share) / n_units)
