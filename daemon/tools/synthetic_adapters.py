"""Adapter versions without training, for tests and benchmarks: seeded random LoRA and head weights.

`make_version` adds a fresh adapter to a ranker, perturbs its LoRA B matrices and head deterministically
(so each seed scores differently from the base and from other seeds), writes it as an artifact and
registers it as a candidate. Never used on the serving path.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.engine import Engine

from adapters.artifacts import save_adapter
from adapters.ranker import Ranker
from storage import registry
from storage.db import session_scope
from storage.models import AdapterVersion, utcnow


def synthetic_state(
    ranker: Ranker, seed: int, *, scale: float = 0.05
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, peft_config) of a seeded random adapter; the ranker is left as it was."""
    name = f"synthetic_{seed}_{uuid.uuid4().hex[:12]}"
    torch.manual_seed(seed)  # peft draws LoRA A from the global RNG
    ranker.new_adapter(name)
    try:
        state = ranker.adapter_state(name)
        config = ranker.peft_config(name)
    finally:
        ranker.delete_adapter(name)
    return perturbed(state, seed, scale=scale), config


def perturbed(state: dict[str, torch.Tensor], seed: int, *, scale: float) -> dict[str, torch.Tensor]:
    """`state` with seeded Gaussian noise of std `scale` added to its LoRA B matrices and head."""
    gen = torch.Generator().manual_seed(seed)
    return {key: value + scale * torch.randn(value.shape, generator=gen, dtype=value.dtype)
            if "lora_B" in key or "classifier" in key else value
            for key, value in state.items()}


def make_version(ranker: Ranker, *, engine: Engine, artifacts_dir: Path, seed: int, version: str | None = None,
                 status: str = "candidate") -> str:
    """Write and register a synthetic version (`version` or the registry's next name); returns its name."""
    state, config = synthetic_state(ranker, seed)
    with session_scope(engine) as s:
        name = version or registry.next_version_name(session=s, artifacts_dir=artifacts_dir)
        info = save_adapter(artifacts_dir, name, state, config, {"synthetic_seed": seed,
                                                                 "base_model": ranker.base.model_id})
        registry.add_version(session=s, version=AdapterVersion(
            version=name, base_model=ranker.base.model_id, quantization=ranker.base.quantization,
            lora_config=config, metrics={"synthetic_seed": seed}, status=status, artifact_path=str(info.path),
            checksum=info.checksum, created_at=utcnow(),
        ))
    return name
