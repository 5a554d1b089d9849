"""Settings -> the plain configs of `adapters` (which never sees Settings)."""

from __future__ import annotations

from pathlib import Path

from adapters.config import GateConfig, LoraSpec, ModelSpec, SplitConfig, TrainConfig, default_base_model
from daemon.settings import Settings


def base_model_path(settings: Settings) -> Path:
    return Path(settings.base_model) if settings.base_model else default_base_model()


def model_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(base_model=base_model_path(settings), quantization=settings.quantization,
                     device=settings.device, max_seq_len=settings.max_seq_len)


def lora_spec(settings: Settings) -> LoraSpec:
    targets = tuple(settings.lora_target_modules) if settings.lora_target_modules else None
    return LoraSpec(r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
                    target_modules=targets)


def train_config(settings: Settings) -> TrainConfig:
    return TrainConfig(
        loss=settings.train_loss, learning_rate=settings.train_learning_rate,
        head_lr_scale=settings.train_head_lr_scale,
        weight_decay=settings.train_weight_decay, warmup_ratio=settings.train_warmup_ratio,
        groups_per_step=settings.train_groups_per_step, max_items_per_group=settings.train_max_items_per_group,
        epochs=settings.train_epochs, grad_clip=settings.train_grad_clip,
        eval_every_steps=settings.train_eval_every_steps, patience=settings.train_patience,
        min_delta=settings.train_min_delta, max_seconds=settings.train_max_seconds, seed=settings.train_seed,
        min_groups=settings.train_min_groups,
    )


def gate_config(settings: Settings) -> GateConfig:
    return GateConfig(min_ndcg_gain=settings.gate_min_ndcg_gain, bootstrap_samples=settings.gate_bootstrap_samples,
                      confidence=settings.gate_confidence, regression_tolerance=settings.gate_regression_tolerance)


def split_config(settings: Settings) -> SplitConfig:
    return SplitConfig(holdout_fraction=settings.holdout_fraction, regression_fraction=settings.regression_fraction,
                       replay_ratio=settings.replay_ratio, seed=settings.train_seed)
