"""Ranker behaviour on the real default base (CPU). All slow: each loads a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from adapters.errors import AdapterMismatch, AdapterNameTaken, AdapterNotFound
from adapters.ranker import RESIDUAL_SCALE

pytestmark = pytest.mark.slow

QUERY = "winter jacket"
TEXTS = ("Fjord red jacket, insulated", "Dune blue tent, mesh", "Birch black jacket, linen")


@pytest.mark.parametrize(("quantization", "layer"), [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_base_is_quantized_but_head_is_not(load_ranker: Callable[..., Any], quantization: str, layer: str) -> None:
    ranker = load_ranker(quantization)
    fp32 = load_ranker("none")
    kinds = {type(m).__name__ for m in ranker.base.model.modules()}
    assert layer in kinds
    assert ranker.base.footprint_bytes < 0.7 * fp32.base.footprint_bytes
    head = {name: type(m) for name, m in ranker.model.named_modules() if "pooler" in name or "classifier" in name}
    assert any("pooler" in name and name.endswith(".dense") for name in head)
    assert all(t.__name__ not in ("Linear4bit", "Linear8bitLt") for t in head.values())
    assert ranker.base.quantization == quantization


def test_zero_shot_is_cosine_of_sentence_embeddings(load_ranker: Callable[..., Any]) -> None:
    st = pytest.importorskip("sentence_transformers")
    ranker = load_ranker("none")
    model = st.SentenceTransformer(str(ranker.base.model.name_or_path), device="cpu")
    emb = model.encode([QUERY, *TEXTS], normalize_embeddings=True)
    expected = emb[1:] @ emb[0]
    np.testing.assert_allclose(ranker.score(QUERY, TEXTS, adapter=None), expected, atol=1e-4)


def test_a_fresh_adapter_scores_like_the_zero_shot_base(load_ranker: Callable[..., Any]) -> None:
    ranker = load_ranker("nf4")
    ranker.new_adapter("fresh")
    zero = ranker.score(QUERY, TEXTS, adapter=None)
    fresh = ranker.score(QUERY, TEXTS, adapter="fresh")
    np.testing.assert_allclose(fresh, RESIDUAL_SCALE * zero, atol=1e-5)
    assert ranker.peft_config("fresh")["ranktune_scoring"] == ranker.scoring == f"cosine*{RESIDUAL_SCALE:g}+head"
    # a trained head moves the score away from the base, by its own logit only
    state = ranker.adapter_state("fresh")
    state["base_model.model.classifier.bias"] = state["base_model.model.classifier.bias"] + 0.5
    ranker.load_state("fresh", state)
    np.testing.assert_allclose(ranker.score(QUERY, TEXTS, adapter="fresh"), RESIDUAL_SCALE * zero + 0.5, atol=1e-5)
    ranker.delete_adapter("fresh")


def test_switching_adapters_switches_lora_and_head(load_ranker: Callable[..., Any]) -> None:
    ranker = load_ranker("none", fresh=True)
    torch.manual_seed(1)
    ranker.new_adapter("va")
    torch.manual_seed(2)
    ranker.new_adapter("vb")
    # Give each adapter its own LoRA weights and head.
    for name, shift in (("va", 0.02), ("vb", -0.03)):
        ranker.load_state(name, {k: v + shift for k, v in ranker.adapter_state(name).items()})
    head_a = ranker.adapter_state("va")["base_model.model.classifier.weight"]
    head_b = ranker.adapter_state("vb")["base_model.model.classifier.weight"]
    assert not torch.equal(head_a, head_b)

    ranker.set_active("va")
    sa = ranker.score(QUERY, TEXTS)
    ranker.set_active("vb")
    sb = ranker.score(QUERY, TEXTS)
    assert not np.allclose(sa, sb)
    ranker.set_active("va")
    np.testing.assert_array_equal(ranker.score(QUERY, TEXTS), sa)
    np.testing.assert_array_equal(ranker.score(QUERY, TEXTS, adapter="vb"), sb)
    assert ranker.active == "va"
    # Changing only b's head moves b's scores and leaves a's alone.
    state_b = ranker.adapter_state("vb")
    state_b["base_model.model.classifier.bias"] = state_b["base_model.model.classifier.bias"] + 1.0
    ranker.load_state("vb", state_b)
    np.testing.assert_allclose(ranker.score(QUERY, TEXTS, adapter="vb"), sb + 1.0, atol=1e-5)
    np.testing.assert_array_equal(ranker.score(QUERY, TEXTS, adapter="va"), sa)
    # score_pairs uses the active adapter and agrees with score.
    np.testing.assert_allclose(ranker.score_pairs([(QUERY, t) for t in TEXTS]), sa, atol=1e-6)
    # No adapter parameter is trainable outside training.
    assert not [n for n, p in ranker.model.named_parameters() if p.requires_grad]

    ranker.delete_adapter("va")
    assert ranker.active is None
    assert ranker.adapter_names == ("vb",)
    np.testing.assert_allclose(ranker.score(QUERY, TEXTS), ranker.score(QUERY, TEXTS, adapter=None))


def test_adapter_names_are_never_reused(load_ranker: Callable[..., Any]) -> None:
    ranker = load_ranker("none")
    ranker.new_adapter("once")
    ranker.delete_adapter("once")
    with pytest.raises(AdapterNameTaken):
        ranker.new_adapter("once")
    with pytest.raises(AdapterNameTaken):
        ranker.new_adapter("bad.name")
    with pytest.raises(AdapterNameTaken):
        ranker.new_adapter("a")  # inside peft's "lora_" prefix
    with pytest.raises(AdapterNotFound):
        ranker.set_active("once")
    with pytest.raises(AdapterNotFound):
        ranker.score(QUERY, TEXTS, adapter="__zero_shot__")


def test_add_adapter_refuses_weights_that_do_not_fit(load_ranker: Callable[..., Any]) -> None:
    ranker = load_ranker("none")
    ranker.new_adapter("fit_src")
    state, cfg = ranker.adapter_state("fit_src"), ranker.peft_config("fit_src")
    missing = dict(list(state.items())[1:])
    with pytest.raises(AdapterMismatch, match="missing"):
        ranker.add_adapter("fit_missing", missing, cfg)
    assert "fit_missing" not in ranker.adapter_names
    wrong = {k: (v[:, :2] if v.ndim == 2 and "lora_A" in k else v) for k, v in state.items()}
    with pytest.raises(AdapterMismatch, match="shape"):
        ranker.add_adapter("fit_shape", wrong, cfg)
    with pytest.raises(AdapterMismatch, match="LoRA"):
        ranker.add_adapter("fit_type", state, {**cfg, "peft_type": "IA3"})
    for rule in (None, "head"):  # no rule recorded, or another base's rule: refused before anything is added
        other = {k: v for k, v in cfg.items() if k != "ranktune_scoring"} | ({"ranktune_scoring": rule} if rule else {})
        with pytest.raises(AdapterMismatch, match="scores as"):
            ranker.add_adapter("fit_rule", state, other)
    assert "fit_rule" not in ranker.adapter_names
    ranker.add_adapter("fit_ok", state, cfg)
    assert "fit_ok" in ranker.adapter_names


def test_a_stored_config_cannot_rewrite_the_shared_base(load_ranker: Callable[..., Any]) -> None:
    # PiSSA-style initialisations rewrite the base layer's own weights when an adapter is added; a stored
    # config asking for one must not change the frozen base every other version shares
    ranker = load_ranker("none", fresh=True)
    ranker.new_adapter("pissa_src")
    state, cfg = ranker.adapter_state("pissa_src"), ranker.peft_config("pissa_src")
    base = {n: p.detach().clone() for n, p in ranker.model.named_parameters() if "base_layer" in n}
    assert base
    ranker.add_adapter("pissa", state, {**cfg, "init_lora_weights": "pissa"})
    ranker.delete_adapter("pissa")
    changed = [n for n, p in ranker.model.named_parameters() if n in base and not torch.equal(p, base[n])]
    assert changed == []  # PiSSA rewrote 36 base layers
