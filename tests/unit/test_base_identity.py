"""A base folder's identity (`adapters.config.base_model_ids`) and the provenance check built on it
(`BaseIdentity.refusal`): what an adapter records of the base it was trained on, and what a scorer accepts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from adapters.config import BaseIdentity, base_model_ids, default_base_model, expected_quantization


@pytest.fixture
def base_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "copy" / default_base_model().name
    shutil.copytree(default_base_model(), dest)
    return dest


def test_a_copy_has_the_same_identity_and_each_edit_that_changes_scores_changes_it(base_copy: Path) -> None:
    original = base_model_ids(default_base_model())
    assert base_model_ids(base_copy) == original  # the same files elsewhere (another host, an image)
    current, legacy = original
    assert current.startswith(f"{base_copy.name}@v2-") and legacy.startswith(f"{base_copy.name}@")

    seen = {current}
    for name in ("tokenizer_config.json", "vocab.txt", "1_Pooling/config.json", "modules.json"):
        f = base_copy / name
        f.write_bytes(f.read_bytes() + b"\n")
        now, old = base_model_ids(base_copy)
        assert now not in seen, name  # the tokenizer or pooling changed: a new identity
        assert old == legacy  # which the legacy fingerprint did not see
        seen.add(now)

    # the weights retrained or edited at the same size: nearly every value changes (a local edit that misses
    # all 16 sampled blocks would not be seen; the fingerprint reads 1 MiB per file, not the whole file)
    weights = base_copy / "model.safetensors"
    size = weights.stat().st_size
    data = np.fromfile(weights, dtype=np.uint8)
    data[1 << 20:] ^= 0x01  # past the header: the low bit of every byte of the tensors
    data.tofile(weights)
    assert weights.stat().st_size == size
    now, old = base_model_ids(base_copy)
    assert now not in seen and old == legacy


def test_the_provenance_check_accepts_both_identities_and_refuses_another_base_or_quantization() -> None:
    current, legacy = base_model_ids(default_base_model())
    served = BaseIdentity((current, legacy), "nf4")
    assert served.refusal(current, "nf4") is None
    assert served.refusal(legacy, "nf4") is None  # a version registered before the new fingerprint
    assert served.refusal(None, None) is None  # an adapter that records neither is not checked
    assert "trained on base other@1234" in (served.refusal("other@1234", "nf4") or "")
    why = served.refusal(current, "int8") or ""
    assert "trained on the int8-quantized base; this runs it nf4" in why and "RANKTUNE_MODEL_QUANTIZATION" in why
    assert BaseIdentity((current,), None).refusal(current, "int8") is None  # quantization unknown here
    assert [expected_quantization(q) for q in ("nf4", "int8", "none", "auto")] == ["nf4", "int8", "none", "nf4"]
