"""The bench's scorers: zero-shot and trained candidates scored on the CPU serving path.

`bench learn` scores far more than it trains: the closed loop orders every logged page with the
zero-shot model, the propensity estimators and the gates score every page, and ground truth scores
every judged query. On CPU the 4/8-bit base dequantizes its weights in every forward (0.2-0.3 s per
query on this 2-core machine), so those scores go through `adapters.fast` instead: the same weights,
dequantized once into fp32, with embeddings cached per text. Its scores equal the quantized path's
within 1e-6 (`tests/unit/test_fast_path.py`), so every ranking, metric and gate verdict is unchanged;
only training runs on the quantized base, as in the daemon. Off CPU, the ranker scores directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BenchScoring", "ScoreFn", "paired_gain", "train_overrides"]

log = logging.getLogger("bench_learn")

ScoreFn = Callable[[str, Sequence[str]], Any]


def paired_gain(model: Sequence[float] | np.ndarray, base: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean per-query gain of `model` over `base` (aligned by query) and its standard error (0 for one query)."""
    diffs = np.asarray(model, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    return float(diffs.mean()), float(diffs.std(ddof=1) / np.sqrt(diffs.size)) if diffs.size > 1 else 0.0


def split_overrides(opts: dict[str, Any]) -> dict[str, Any]:
    """SplitConfig fields the bench's options override (when given)."""
    given = opts.get("selection_fraction")
    return {} if given is None else {"selection_fraction": given}


def estimate_curve(groups: Sequence[Any], n_positions: int, zero_shot: ScoreFn, opts: dict[str, Any],
                   method: str = "auto") -> Any:
    """The position-bias curve as the daemon's cycle estimates it (`adapters.propensity.estimate`, relevance
    feature: the zero-shot score), with the bench's `--min-slot-repeats` when given."""
    from adapters import propensity as prop

    def features(g: Any) -> np.ndarray:
        return np.asarray(zero_shot(g.query, g.texts), dtype=np.float64)[:, None]

    given = opts.get("min_slot_repeats")
    repeats = prop.MIN_SLOT_REPEATS if given is None else float(given)
    return prop.estimate(list(groups), n_positions, features=features, method=method, min_slot_repeats=repeats)


def train_overrides(opts: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields the bench's options override (when given); the rest keep the daemon's defaults."""
    given = {"random_negatives": opts.get("random_negatives"), "eval_every_steps": opts.get("eval_every")}
    return {k: v for k, v in given.items() if v is not None}


class BenchScoring:
    """`zero_shot`, `adapter(name)` and `embeddings` for one ranker, fast where the fast path runs."""

    def __init__(self, ranker: Any, spec: Any) -> None:
        from adapters.fast import FastBase, FastPathUnavailable

        self.ranker = ranker
        self._fast: Any = None
        try:
            self._fast = FastBase(ranker, spec, "merged-fp32")
        except FastPathUnavailable as exc:
            log.info("scoring on the training model (%s)", exc)
            return
        self._zero = self._fast.build("base", {}, {})

    def zero_shot(self, query: str, texts: Sequence[str]) -> Any:
        """Zero-shot scores (numpy float32), as the base serves them."""
        if self._fast is None:
            return np.asarray(self.ranker.score(query, texts, adapter=None))
        return np.asarray(self._zero.score_pairs([(query, t) for t in texts]))

    def adapter(self, name: str) -> ScoreFn:
        """A scorer of the ranker's adapter `name` as it is now (a snapshot: later training does not change it)."""
        if self._fast is None:
            return lambda q, t: self.ranker.score(q, t, adapter=name)
        model = self._fast.build(name, self.ranker.adapter_state(name), self.ranker.peft_config(name))
        return lambda q, t: model.score_pairs([(q, x) for x in t])

    def embeddings(self, texts: Sequence[str]) -> Any:
        """Unit-norm base embeddings (torch, float32), one row per text."""
        import torch

        if self._fast is None:
            return torch.as_tensor(self.ranker.embeddings(texts))
        return self._fast.embeddings(texts)
