from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adapters.artifacts import (
    load_adapter,
    remove_version,
    save_adapter,
    sweep_temp,
    validate_version_name,
    versions_of_run,
)
from adapters.dataset import Splits
from adapters.errors import (
    ArtifactCorrupt,
    ArtifactExists,
    ArtifactMissing,
    InvalidVersionName,
)

CONFIG = {"peft_type": "LORA", "r": 8, "target_modules": ["query", "value"]}
META = {"base_model": "model@abc", "holdout_ndcg10": 0.91}


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"base_model.model.x.lora_A.weight": torch.randn(8, 16, generator=g),
            "base_model.model.classifier.bias": torch.zeros(1)}


def test_round_trip(tmp_path: Path) -> None:
    info = save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    assert info.path == tmp_path / "v0001"
    assert sorted(os.listdir(info.path)) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json",
                                             "meta.json"]
    loaded = load_adapter(tmp_path, "v0001", expected_checksum=info.checksum)
    assert loaded.checksum == info.checksum
    assert loaded.peft_config == CONFIG and loaded.meta == META
    for k, v in _state().items():
        assert torch.equal(loaded.state[k], v)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    info = save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    weights = info.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match=r"adapter_model\.safetensors"):
        load_adapter(tmp_path, "v0001")


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    info = save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    (info.path / "meta.json").write_text(json.dumps({"holdout_ndcg10": 0.99}))
    manifest = json.loads((info.path / "manifest.json").read_text())
    import hashlib

    manifest["files"]["meta.json"] = hashlib.sha256((info.path / "meta.json").read_bytes()).hexdigest()
    (info.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactCorrupt, match="overall checksum"):
        load_adapter(tmp_path, "v0001")


@pytest.mark.parametrize("extra", ["adapter_model.bin", "notes.txt", "sub"])
def test_extra_file_is_refused(tmp_path: Path, extra: str) -> None:
    info = save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    if extra == "sub":
        (info.path / extra).mkdir()
    else:
        (info.path / extra).write_bytes(b"\x80\x04 pickle")
    with pytest.raises(ArtifactCorrupt, match=re.escape(extra)):
        load_adapter(tmp_path, "v0001")


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "meta.json", "manifest.json"])
def test_missing_file_is_refused(tmp_path: Path, name: str) -> None:
    info = save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    (info.path / name).unlink()
    with pytest.raises(ArtifactMissing, match=re.escape(name)):
        load_adapter(tmp_path, "v0001")


def test_missing_version_and_wrong_expected_checksum(tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissing):
        load_adapter(tmp_path, "v0009")
    save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    with pytest.raises(ArtifactCorrupt, match="recorded"):
        load_adapter(tmp_path, "v0001", expected_checksum="0" * 64)


def test_versions_are_immutable(tmp_path: Path) -> None:
    first = save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    other = {k: v + 1.0 for k, v in _state().items()}
    with pytest.raises(ArtifactExists):
        save_adapter(tmp_path, "v0001", other, CONFIG, META)
    kept = load_adapter(tmp_path, "v0001", expected_checksum=first.checksum)  # the refused write changed nothing
    assert all(torch.equal(kept.state[k], v) for k, v in _state().items())
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("name", ["v1", "../v0001", "v0001/x", "V0001", "v0001 ", "", "latest", "v00a1",
                                  "v0001\n", "v0001\r\n", "v\u0661\u0662\u0663\u0664", "v000\uff11", "\nv0001"])
def test_bad_version_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidVersionName):
        validate_version_name(name)
    with pytest.raises(ValueError):
        save_adapter(tmp_path, name, _state(), CONFIG, META)
    assert validate_version_name("v12345") == "v12345"


def test_sweep_temp(tmp_path: Path) -> None:
    save_adapter(tmp_path, "v0001", _state(), CONFIG, META)
    stale = tmp_path / ".tmp-v0002-abc"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    assert sweep_temp(tmp_path, min_age_s=3600) == []
    assert sweep_temp(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0001"]
    assert sweep_temp(tmp_path / "missing") == []


def test_versions_of_a_run_and_their_removal(tmp_path: Path) -> None:
    """What the trainer's parent removes when a run's version never got its registry row (#14)."""
    save_adapter(tmp_path, "v0001", _state(), CONFIG, {**META, "run_id": 1})
    save_adapter(tmp_path, "v0002", _state(), CONFIG, {**META, "run_id": 2})
    save_adapter(tmp_path, "v0003", _state(), CONFIG, META)  # no run (synthetic, imported)
    (tmp_path / ".tmp-v0004-abc").mkdir()
    assert versions_of_run(tmp_path, 2) == ["v0002"]
    assert versions_of_run(tmp_path, 3) == [] and versions_of_run(tmp_path / "missing", 2) == []
    remove_version(tmp_path, "v0002")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-v0004-abc", "v0001", "v0003"]
    assert load_adapter(tmp_path, "v0001").meta["run_id"] == 1
    with pytest.raises(InvalidVersionName):
        remove_version(tmp_path, "../v0001")


@pytest.mark.slow
def test_round_trip_gives_identical_scores(
    tmp_path: Path, load_ranker: Callable[..., Any], synthetic_splits: Splits
) -> None:
    ranker = load_ranker("none")
    torch.manual_seed(5)
    ranker.new_adapter("art_src")
    # Make the weights non-trivial (LoRA B starts at zero) so the check means something.
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in ranker.adapter_state("art_src").items()}
    ranker.load_state("art_src", state)
    info = save_adapter(tmp_path, "v0001", ranker.adapter_state("art_src"), ranker.peft_config("art_src"),
                        {"base_model": ranker.base.model_id})
    loaded = load_adapter(tmp_path, "v0001", expected_checksum=info.checksum)
    ranker.add_adapter("art_copy", loaded.state, loaded.peft_config)
    g = synthetic_splits.holdout[0]
    original = ranker.score(g.query, g.texts, adapter="art_src")
    copy = ranker.score(g.query, g.texts, adapter="art_copy")
    np.testing.assert_array_equal(original, copy)
    assert not np.allclose(original, ranker.score(g.query, g.texts, adapter=None))
