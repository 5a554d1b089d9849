"""Learned residual weight: the data chooses between the residual design and a plain cross-encoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from adapters.config import TrainConfig
from adapters.dataset import Splits
from adapters.errors import AdapterMismatch
from adapters.ranker import RESIDUAL_SCALE
from adapters.training import train

pytestmark = pytest.mark.slow


def test_residual_weight_travels_with_the_adapter(load_ranker: Callable[..., Any]) -> None:
    ranker = load_ranker("none")
    ranker.new_adapter("mix-a")
    assert ranker.residual_scale("mix-a") == RESIDUAL_SCALE
    zero = ranker.score("red shoes", ["red shoe", "blue hat"], adapter=None)
    ranker.set_residual_scale("mix-a", 2.0)
    np.testing.assert_allclose(ranker.score("red shoes", ["red shoe", "blue hat"], adapter="mix-a"), 2.0 * zero,
                               atol=1e-5)
    cfg = ranker.peft_config("mix-a")
    assert cfg["ranktune_scoring"] == "cosine*2+head"
    ranker.add_adapter("mix-b", ranker.adapter_state("mix-a"), cfg)
    assert ranker.residual_scale("mix-b") == 2.0
    with pytest.raises(AdapterMismatch):
        ranker.add_adapter("mix-c", ranker.adapter_state("mix-a"), {**cfg, "ranktune_scoring": "head"})
    for name in ("mix-a", "mix-b"):
        ranker.delete_adapter(name)


def test_training_learns_the_weight_and_keeps_the_best(load_ranker: Callable[..., Any],
                                                        synthetic_splits: Splits) -> None:
    ranker = load_ranker("none")
    cfg = TrainConfig(epochs=1, eval_every_steps=4, min_groups=10, residual_scale="learn", learning_rate=1e-3,
                      seed=1)
    data = Splits(synthetic_splits.train[:40], synthetic_splits.holdout[:20])
    res = train(ranker, data, cfg, adapter_name="mix-train")
    scales = [h["residual_scale"] for h in res.history]
    assert all(s is not None for s in scales) and len(set(scales)) > 1  # it moved
    assert res.residual_scale == pytest.approx(ranker.residual_scale("mix-train"))
    best = next(h for h in res.history if h["step"] == res.best_step)
    assert res.residual_scale == pytest.approx(best["residual_scale"])
    ranker.delete_adapter("mix-train")
