"""The CUDA path: 4-bit NF4 (and LLM.int8) training and scoring on a GPU.

Runs only where CUDA is available (a lent GPU machine), with `-m gpu`. It needs only the `adapters`
package and its ML dependencies, so it also runs with `--noconftest` on a machine without the
daemon's service dependencies. Set RANKTUNE_GPU_REPORT to a path to get the measured numbers as JSON.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import artifacts
from adapters.config import LoraSpec, ModelSpec, SplitConfig, TrainConfig, default_base_model
from adapters.dataset import build_groups, split
from adapters.ranker import Ranker
from adapters.ranking_metrics import evaluate_groups
from adapters.training import train
from tests.fixtures.model import synthetic_events

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

REPORT: dict[str, object] = {}


def _base() -> Path:
    return Path(os.environ.get("RANKTUNE_MODEL_PATH") or default_base_model())


@pytest.fixture(scope="module")
def splits():
    events, texts = synthetic_events(300, seed=11)
    groups = build_groups(events, texts.get)
    return split(groups, SplitConfig(holdout_fraction=0.2, regression_fraction=0.1, replay_ratio=0.0))


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("RANKTUNE_GPU_REPORT")
    if path:
        REPORT["device_name"] = torch.cuda.get_device_name(0)
        REPORT["torch"] = torch.__version__
        Path(path).write_text(json.dumps(REPORT, indent=2, default=str))


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_training_and_scoring_on_cuda(quantization, splits, tmp_path):
    import bitsandbytes as bnb

    torch.cuda.reset_peak_memory_stats()
    spec = ModelSpec(path=_base(), quantization=quantization, device="cuda", max_seq_len=64)
    ranker = Ranker.load(spec, LoraSpec(r=8, alpha=16, dropout=0.05))
    assert ranker.device.type == "cuda"
    assert ranker.base.quantization == quantization
    layer = bnb.nn.Linear4bit if quantization == "nf4" else bnb.nn.Linear8bitLt
    qlayers = [m for m in ranker.model.modules() if isinstance(m, layer)]
    assert qlayers, f"no {layer.__name__} modules: the base is not quantized"
    assert all(m.weight.device.type == "cuda" for m in qlayers)
    if quantization == "nf4":
        qs = qlayers[0].weight.quant_state
        assert qs.quant_type == "nf4" and qs.nested, "expected NF4 with double quantization"

    zero_shot = evaluate_groups(lambda q, t: ranker.score(q, t, adapter=None), splits.holdout)
    t0 = time.monotonic()
    result = train(ranker, splits, TrainConfig(epochs=3, groups_per_step=8, learning_rate=1e-3, eval_every_steps=10,
                                                patience=4, max_seconds=300, min_groups=10),
                   adapter_name="gpu-candidate")
    seconds = time.monotonic() - t0
    trainable = [n for n, p in ranker.model.named_parameters() if p.requires_grad]
    assert not any("base_layer" in n for n in trainable), "a frozen base weight is trainable"
    first, best = result.history[0], max(h["holdout_ndcg10"] for h in result.history)
    assert best == pytest.approx(result.holdout.ndcg10)
    assert result.holdout.ndcg10 > first["holdout_ndcg10"] + 0.05, "training did not improve the holdout"

    # scoring on the GPU, finite, and identical after an artifact round trip
    ranker.set_active("gpu-candidate")
    pairs = [(g.query, t) for g in splits.holdout for t in g.texts]
    t1 = time.monotonic()
    scores = ranker.score_pairs(pairs)
    torch.cuda.synchronize()
    score_s = time.monotonic() - t1
    assert np.isfinite(scores).all()
    info = artifacts.save_adapter(tmp_path, "v0001", ranker.adapter_state("gpu-candidate"),
                                  ranker.peft_config("gpu-candidate"), {"device": "cuda"})
    loaded = artifacts.load_adapter(tmp_path, "v0001", expected_checksum=info.checksum)
    ranker.add_adapter("v0001-reloaded", loaded.state, loaded.peft_config)
    again = ranker.score_pairs(pairs, adapter="v0001-reloaded")
    np.testing.assert_allclose(again, scores, rtol=1e-3, atol=1e-3)

    REPORT[quantization] = {
        "footprint_mb": round(ranker.base.footprint_bytes / 2**20, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "zero_shot_ndcg10": round(zero_shot.ndcg10, 4), "first_eval_ndcg10": round(first["holdout_ndcg10"], 4),
        "trained_ndcg10": round(result.holdout.ndcg10, 4), "train_pairs_per_s": round(result.examples_per_s, 1),
        "train_seconds": round(seconds, 1), "steps": result.steps, "best_step": result.best_step,
        "score_pairs_per_s": round(len(pairs) / score_s, 1),
    }
