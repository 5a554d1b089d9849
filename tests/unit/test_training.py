"""Training runs on the synthetic shop (slow, CPU, each well under a minute)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch

from adapters.config import GateConfig, TrainConfig
from adapters.dataset import Splits
from adapters.errors import NotEnoughData
from adapters.gate import decide
from adapters.ranking_metrics import evaluate_groups
from adapters.training import Stop, TrainResult, train

logger = logging.getLogger(__name__)

# ----- training -------------------------------------------------------------------------------------

FAST = TrainConfig(loss="listwise", learning_rate=1e-3, warmup_ratio=0.1, groups_per_step=8, max_items_per_group=8,
                   epochs=3, eval_every_steps=5, patience=3, min_delta=0.002, max_seconds=120, seed=13, min_groups=10)


@pytest.fixture(scope="module")
def small_splits(synthetic_splits: Splits) -> Splits:
    """Fewer groups for the runs that check mechanics rather than quality (int8 scoring is slow on CPU)."""
    s = synthetic_splits
    return Splits(train=s.train[-56:], holdout=s.holdout[:16], regression=s.regression[:8])


@pytest.fixture(scope="module")
def trained(load_ranker: Callable[..., Any], synthetic_splits: Splits) -> tuple[Any, TrainResult]:
    ranker = load_ranker("none")
    return ranker, train(ranker, synthetic_splits, FAST, adapter_name="tr_main")


@pytest.mark.slow
def test_trained_adapter_beats_zero_shot_base(trained: tuple[Any, TrainResult], synthetic_splits: Splits) -> None:
    ranker, result = trained
    holdout = synthetic_splits.holdout
    base = evaluate_groups(lambda q, t: ranker.score(q, t, adapter=None), holdout)
    again = evaluate_groups(lambda q, t: ranker.score(q, t, adapter="tr_main"), holdout)
    logger.info("synthetic holdout NDCG@10: zero-shot %.4f, trained %.4f (%.0f pairs/s, %.1fs)",
                base.ndcg10, result.holdout.ndcg10, result.examples_per_s, result.seconds)
    assert result.holdout.ndcg10 >= base.ndcg10 + 0.08
    assert again.ndcg10 == pytest.approx(result.holdout.ndcg10, abs=1e-9)  # the adapter holds the best state
    # The gate agrees: the first adapter is compared with the base scorer on the same groups.
    decision = decide(again.per_group_ndcg, base.per_group_ndcg, None, None, GateConfig())
    assert decision.passed, decision.reasons
    assert result.regression is not None and result.regression.n_groups == len(synthetic_splits.regression)
    assert result.history[0]["step"] == 0 and result.steps > 0
    assert ranker.active is None and "tr_main" in ranker.adapter_names


@pytest.mark.slow
@pytest.mark.parametrize(("quantization", "layer"), [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_training_updates_only_lora_and_head(
    load_ranker: Callable[..., Any], small_splits: Splits, quantization: str, layer: str
) -> None:
    ranker = load_ranker(quantization)
    quantized = [m for m in ranker.base.model.modules() if type(m).__name__ == layer]
    assert quantized
    assert ranker.base.footprint_bytes < 0.7 * load_ranker("none").base.footprint_bytes
    frozen_before = quantized[0].weight.detach().clone()
    trainable: list[str] = []

    def on_progress(event: dict[str, Any]) -> None:
        if event["event"] == "step" and not trainable:
            trainable.extend(n for n, p in ranker.model.named_parameters() if p.requires_grad)

    name = f"tr_{quantization}"
    cfg = FAST.model_copy(update=dict(learning_rate=2e-3, epochs=1, eval_every_steps=3))
    data = replace(small_splits, train=small_splits.train[-40:])  # 5 steps
    result = train(ranker, data, cfg, adapter_name=name, on_progress=on_progress)

    assert trainable
    assert all(("lora_" in n and f".{name}." in n) or f"modules_to_save.{name}." in n for n in trainable), trainable
    assert any("classifier" in n for n in trainable) and any("lora_A" in n for n in trainable)
    assert torch.equal(quantized[0].weight.detach(), frozen_before)  # the base did not move
    assert not [n for n, p in ranker.model.named_parameters() if p.requires_grad]  # frozen again after
    first_loss = result.history[0]["holdout_loss"]
    assert min(h["holdout_loss"] for h in result.history[1:]) < first_loss - 0.05
    assert result.holdout.ndcg10 > result.history[0]["holdout_ndcg10"]
    logger.info("%s: %.0f pairs/s training, holdout NDCG@10 %.4f -> %.4f", quantization, result.examples_per_s,
                result.history[0]["holdout_ndcg10"], result.holdout.ndcg10)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(load_ranker: Callable[..., Any], small_splits: Splits) -> None:
    # A far too high learning rate: the holdout peaks early, then degrades; the run must stop and
    # hand back the peak, not the last weights.
    ranker = load_ranker("none")
    cfg = FAST.model_copy(update=dict(learning_rate=1e-2, warmup_ratio=0.0, epochs=3, eval_every_steps=2,
                                      patience=2, min_delta=0.0))
    result = train(ranker, small_splits, cfg, adapter_name="tr_early")
    logger.info("early stopping history: %s", [(h["step"], round(h["holdout_ndcg10"], 4)) for h in result.history])
    assert result.early_stopped
    assert 0 < result.best_step < result.steps
    best = max(result.history, key=lambda h: h["holdout_ndcg10"])
    assert result.holdout.ndcg10 == pytest.approx(best["holdout_ndcg10"])
    assert result.best_step == best["step"]
    # The returned state reproduces the best holdout NDCG, in the ranker and in a fresh adapter.
    ranker.add_adapter("tr_early_copy", result.state, ranker.peft_config("tr_early"))
    for name in ("tr_early", "tr_early_copy"):
        ev = evaluate_groups(functools.partial(ranker.score, adapter=name), small_splits.holdout)
        assert ev.ndcg10 == pytest.approx(result.holdout.ndcg10, abs=1e-9)


@pytest.mark.slow
def test_a_selection_slice_chooses_the_checkpoint_and_the_holdout_only_judges_it(
        load_ranker: Callable[..., Any], small_splits: Splits) -> None:
    # Early stopping reads the selection slice; the holdout is evaluated once, on the chosen weights.
    ranker = load_ranker("none")
    data = replace(small_splits, train=small_splits.train[:-16], selection=small_splits.train[-16:])
    cfg = FAST.model_copy(update=dict(learning_rate=1e-2, warmup_ratio=0.0, epochs=2, eval_every_steps=2,
                                      patience=2, min_delta=0.0))
    result = train(ranker, data, cfg, adapter_name="tr_select")
    assert {h["selected_on"] for h in result.history} == {"selection"}
    best = max(result.history, key=lambda h: h["holdout_ndcg10"])
    assert result.best_step == best["step"]
    on_selection = evaluate_groups(functools.partial(ranker.score, adapter="tr_select"), data.selection)
    on_holdout = evaluate_groups(functools.partial(ranker.score, adapter="tr_select"), data.holdout)
    assert on_selection.ndcg10 == pytest.approx(best["holdout_ndcg10"], abs=1e-9)
    assert result.holdout.ndcg10 == pytest.approx(on_holdout.ndcg10, abs=1e-9)
    assert result.holdout.ndcg10 != pytest.approx(on_selection.ndcg10, abs=1e-6)  # two different sets


@pytest.mark.slow
def test_warm_start_should_stop_and_budget(trained: tuple[Any, TrainResult], synthetic_splits: Splits) -> None:
    ranker, first = trained
    # Warm start: step 0 of the new run is exactly the champion's holdout NDCG. should_stop ends the
    # run before any step, with the champion's weights as the best state.
    res = train(ranker, synthetic_splits, FAST, adapter_name="tr_warm", init_state=first.state,
                should_stop=lambda: True)
    assert res.stopped and res.steps == 0 and res.best_step == 0
    assert res.history[0]["holdout_ndcg10"] == pytest.approx(first.holdout.ndcg10, abs=1e-9)
    assert all(torch.equal(res.state[k], v) for k, v in first.state.items())
    # A tiny wall-clock budget ends the run cleanly after the first evaluation.
    res = train(ranker, synthetic_splits, FAST.model_copy(update=dict(max_seconds=0.01)), adapter_name="tr_budget")
    assert res.stopped_by_budget and res.steps == 0 and res.state


def test_not_enough_data(synthetic_splits: Splits) -> None:
    few = Splits(train=synthetic_splits.train[:3], holdout=synthetic_splits.holdout)
    with pytest.raises(NotEnoughData, match="3 training"):
        train(None, few, FAST, adapter_name="never")  # type: ignore[arg-type]
    with pytest.raises(NotEnoughData, match="holdout"):
        train(None, Splits(train=synthetic_splits.train, holdout=[]), FAST, adapter_name="never")  # type: ignore[arg-type]


def test_stop_condition_reasons() -> None:
    cfg = FAST.model_copy(update=dict(patience=2, max_seconds=60))
    now = time.monotonic()
    stop = Stop(cfg, now, should_stop=None)
    assert not stop.before_step() and stop.reason is None
    assert not stop.after_eval(improved=False)
    assert not stop.after_eval(improved=True)  # an improvement resets the count
    assert not stop.after_eval(improved=False)
    assert stop.after_eval(improved=False) and stop.reason == "early"
    assert Stop(cfg, now - 61, should_stop=None).before_step()  # the wall-clock budget is spent
    asked = Stop(cfg, now, should_stop=lambda: True)
    assert asked.before_step() and asked.reason == "stopped"
    budget_first = Stop(cfg, now - 61, should_stop=lambda: True)
    assert budget_first.before_step() and budget_first.reason == "budget"


@pytest.mark.slow
def test_training_groups_carry_random_negatives_from_other_pages(
    load_ranker: Callable[..., Any], small_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters import training

    seen: list[Any] = []
    original = training._Run.batch_loss

    def spy(self: Any, batch: list[Any]) -> Any:
        seen.extend(batch)
        return original(self, batch)

    monkeypatch.setattr(training._Run, "batch_loss", spy)
    cfg = FAST.model_copy(update=dict(epochs=1, random_negatives=3, eval_every_steps=50, max_seconds=600))
    data = Splits(train=small_splits.train[:16], holdout=small_splits.holdout[:4])
    train(load_ranker("none"), data, cfg, adapter_name="tr_negatives")
    originals = {g.key: g for g in data.train}
    assert sorted(g.key for g in seen) == sorted(originals)  # one epoch: every page once
    for g in seen:
        page = originals[g.key]
        kept = min(len(page), cfg.max_items_per_group)
        assert len(g) == kept + 3 and g.labels[kept:] == (0, 0, 0)
        assert not set(g.item_ids[kept:]) & set(page.item_ids)
