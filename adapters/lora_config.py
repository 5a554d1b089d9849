"""Adapter configs as stored with each version: peft's LoraConfig to and from plain JSON dicts."""

from __future__ import annotations

import enum
from typing import Any

from peft import LoraConfig

from adapters.config import BaseIdentity
from adapters.errors import AdapterMismatch

__all__ = ["QUANTIZATION_KEY", "SCORING_KEY", "config_from_dict", "jsonable", "refusal"]

SCORING_KEY = "ranktune_scoring"  # ranktune's own key in a stored adapter config: the scoring rule
QUANTIZATION_KEY = "ranktune_base_quantization"  # ranktune's own key: the quantization it was trained on


def jsonable(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, set | frozenset):
        return sorted(v)
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


def refusal(peft_config: dict[str, Any], identity: BaseIdentity) -> str | None:
    """Why an adapter with this stored config cannot run on a base of `identity` (see
    `BaseIdentity.refusal`); None when it can."""
    return identity.refusal(peft_config.get("base_model_name_or_path"), peft_config.get(QUANTIZATION_KEY))


def config_from_dict(d: dict[str, Any]) -> LoraConfig:
    """A LoraConfig from an adapter's stored config dict (ranktune's own keys dropped); AdapterMismatch if invalid."""
    if d.get("peft_type") not in ("LORA", None):
        raise AdapterMismatch(f"only LoRA adapters are supported, got peft_type={d.get('peft_type')!r}")
    clean = dict(d)
    clean.pop("peft_type", None)
    clean.pop("base_model_name_or_path", None)  # provenance only; peft would look for a folder there
    clean.pop(SCORING_KEY, None)  # ranktune's own; checked by Ranker.add_adapter
    clean.pop(QUANTIZATION_KEY, None)  # ranktune's own provenance; checked at swap (BaseIdentity)
    clean["inference_mode"] = True
    # Stored weights replace whatever LoRA starts from; an initialisation that rewrites the base's own
    # weights (pissa, olora, loftq, ...) would change the frozen base shared by every version.
    clean["init_lora_weights"] = True
    clean.pop("loftq_config", None)
    try:
        return LoraConfig(**clean)
    except (TypeError, ValueError) as exc:
        raise AdapterMismatch(f"invalid LoRA config: {exc}") from exc
