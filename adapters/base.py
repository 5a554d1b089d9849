"""Loading the frozen, optionally quantized base model.

This is the only module that imports bitsandbytes (lazily, inside the functions that quantize), so a
CPU-only install without it still imports everything else and can run `quantization="none"`.

A base is one of two kinds:
* a cross-encoder: its config names a `*ForSequenceClassification` architecture with one label. It has a
  trained relevance head, and without an adapter it scores with that head.
* anything else is treated as an embedding model (a sentence-transformers folder, like the default, has
  `modules.json`). It gets a fresh single-logit head for training; without an adapter it scores zero-shot
  by the cosine of pooled embeddings, which is the "base model" the first candidate must beat.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from adapters.config import CPU_AUTO_QUANTIZATION, BaseIdentity, ModelSpec, base_model_ids, default_base_model
from adapters.errors import BaseModelError, DeviceUnavailable, QuantizationError

__all__ = [
    "CPU_AUTO_QUANTIZATION",
    "HEAD_MODULE_NAMES",
    "LoadedBase",
    "default_base_model",
    "default_lora_targets",
    "load_base",
    "resolve_device",
    "resolve_quantization",
]

logger = logging.getLogger(__name__)

# What `quantization="auto"` means on CPU. Measured on the default all-MiniLM-L6-v2 base, 2 shared CPU cores,
# max_seq_len 32, LoRA r 8 (pairs/s, two runs each):
#   training: none 176-214, nf4 197-268, int8 182-278   (equal within noise: LoRA + fp32 activations dominate)
#   scoring:  none ~780,    nf4 446-667, int8 ~460      (dequantising per forward costs; none is fastest)
#   memory:   none 91 MB,   nf4 54 MB,   int8 59 MB
# nf4 keeps training speed and cuts memory 40%, at some scoring throughput; it stays the CPU default so a
# bigger base also fits. Set this to "none" if CPU scoring latency matters more than memory.
# (CPU_AUTO_QUANTIZATION itself lives in adapters.config, which the model-free CLI reads.)

# Modules that form the relevance head: never quantized, trained in full and saved with each adapter
# (peft `modules_to_save`). `pooler` is BERT's CLS projection that feeds `classifier`; `score` is the
# head of decoder models; `pre_classifier` is DistilBERT's.
HEAD_MODULE_NAMES: tuple[str, ...] = ("classifier", "pre_classifier", "pooler", "score")

BERT_LORA_TARGETS: tuple[str, ...] = ("query", "key", "value", "dense")
DECODER_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LoadedBase:
    """A loaded, frozen base model and what the ranker needs to know about it."""

    model: PreTrainedModel
    tokenizer: Any
    device: torch.device
    quantization: str  # resolved: nf4 | int8 | none
    is_sentence_encoder: bool  # True: zero-shot = cosine of pooled embeddings; False: own head
    model_id: str  # folder name + fingerprint (adapters.config.base_model_ids); recorded with every adapter
    pooling: str  # mean | cls, for zero-shot embeddings
    head_modules: tuple[str, ...]  # module names (last segment) trained and saved with each adapter
    max_seq_len: int
    footprint_bytes: int
    legacy_id: str  # its fingerprint before stop 26, which older versions recorded

    @property
    def identity(self) -> BaseIdentity:
        """What adapters must have been trained on to run on this base."""
        return BaseIdentity((self.model_id, self.legacy_id), self.quantization)


def resolve_device(pref: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU. Raises DeviceUnavailable for `cuda` without CUDA."""
    if pref == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable("device=cuda was requested but torch sees no CUDA device")
        return torch.device("cuda:0")
    if pref == "cpu":
        return torch.device("cpu")
    raise DeviceUnavailable(f"unknown device {pref!r} (expected auto, cpu or cuda)")


def resolve_quantization(q: str, device: torch.device) -> str:
    """Turn the configured quantization into nf4 | int8 | none for `device`.

    `auto` is nf4 on CUDA and `CPU_AUTO_QUANTIZATION` on CPU. nf4 and int8 are checked by quantizing a
    small tensor on the device, so a bitsandbytes build without that backend fails here, with a clear
    QuantizationError, instead of deep inside model loading.
    """
    if q == "auto":
        q = "nf4" if device.type == "cuda" else CPU_AUTO_QUANTIZATION
    if q == "none":
        return q
    if q not in ("nf4", "int8"):
        raise QuantizationError(f"unknown quantization {q!r} (expected nf4, int8, none or auto)")
    error = _probe_bitsandbytes(q, str(device))
    if error:
        raise QuantizationError(f"quantization={q} is not usable on {device}: {error}")
    return q


@functools.lru_cache(maxsize=8)
def _probe_bitsandbytes(q: str, device: str) -> str | None:
    try:
        import bitsandbytes.functional as bnbf
    except Exception as exc:  # ImportError, or a broken native library
        return f"bitsandbytes cannot be imported ({exc})"
    try:
        # LLM.int8's CUDA kernels take fp16 input (Linear8bitLt casts activations itself); its CPU path and
        # NF4 take fp32. Probe with what the real forward will pass.
        dtype = torch.float16 if q == "int8" and device.startswith("cuda") else torch.float32
        x = torch.randn(64, 64, device=device, dtype=dtype)
        if q == "nf4":
            bnbf.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
        else:
            bnbf.int8_vectorwise_quant(x.half())  # LLM.int8 quantizes fp16 activations (CUDA insists)
    except Exception as exc:
        return f"bitsandbytes has no working {q} kernel for this device ({type(exc).__name__}: {exc})"
    return None


def _skip_patterns() -> list[str]:
    # transformers matches skip entries from the start of the module name or as a suffix, so a bare
    # "pooler" would NOT match "bert.pooler.dense" and the pooler would be quantized; a regex with an
    # optional prefix keeps the whole head module (and its children) in full precision.
    return [rf"(.*\.)?{name}" for name in HEAD_MODULE_NAMES]


def _quantization_config(q: str, device: torch.device) -> Any:
    from transformers import BitsAndBytesConfig

    if q == "nf4":
        # QLoRA recipe: NF4 weights, double-quantized constants. bf16 compute on CUDA is the usual
        # speed/accuracy trade; CPU kernels compute in fp32.
        compute = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=_skip_patterns(),
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_skip_patterns())


class _DropCastNotice(logging.Filter):
    """bitsandbytes logs 'inputs will be cast from float32 to float16' on every int8 forward; it is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


def _tune_bitsandbytes(model: torch.nn.Module) -> None:
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            # bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 CPUs at the first eval forward. That
            # packed path has no autograd (training after any evaluation fails, `result += bias` on a leaf)
            # and measured slower here (231 vs 428 pairs/s scoring), so the repacking is switched off.
            module.support_avx512bf16_for_cpu = False
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastNotice) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropCastNotice())


def _pooling_mode(path: Path) -> str:
    modules = path / "modules.json"
    if not modules.is_file():
        return "mean"
    for entry in json.loads(modules.read_text()):
        if entry.get("type", "").endswith("Pooling"):
            cfg_file = path / entry.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text())
                if cfg.get("pooling_mode_cls_token"):
                    return "cls"
                if not cfg.get("pooling_mode_mean_tokens", True):
                    logger.warning("pooling of %s is not mean or cls; zero-shot scoring uses mean", path)
    return "mean"


def _is_cross_encoder(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels == 1


def default_lora_targets(model: torch.nn.Module) -> tuple[str, ...] | None:
    """LoRA targets by architecture: BERT-like (query, key, value, dense) or decoder (q/k/v/o_proj).

    None lets peft choose from its own per-model-type table.
    """
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(DECODER_LORA_TARGETS) <= leaves:
        return DECODER_LORA_TARGETS
    if {"query", "key", "value"} <= leaves:
        return BERT_LORA_TARGETS
    return None


def _head_modules(model: torch.nn.Module) -> tuple[str, ...]:
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in HEAD_MODULE_NAMES and any(True for _ in module.parameters()) and leaf not in found:
            found.append(leaf)
    if not any(n in found for n in ("classifier", "score")):
        raise BaseModelError(f"{type(model).__name__} has no classifier/score head module")
    return tuple(found)


def load_base(spec: ModelSpec) -> LoadedBase:
    """Load the base from a local folder (never the network), quantized as asked, frozen, in eval mode."""
    path = spec.base_path
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base model folder {path} does not exist or has no config.json")
    device = resolve_device(spec.device)
    quant = resolve_quantization(spec.quantization, device)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        cross = _is_cross_encoder(config)
        kwargs: dict[str, Any] = {"num_labels": 1, "local_files_only": True, "dtype": torch.float32}
        if not cross:
            # A classifier with another label count (or none) is replaced by a fresh single-logit head.
            kwargs["ignore_mismatched_sizes"] = True
        if quant != "none":
            kwargs["quantization_config"] = _quantization_config(quant, device)
            kwargs["device_map"] = {"": device}
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        if quant == "none":
            model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise BaseModelError(f"cannot load base model from {path}: {exc}") from exc
    if tokenizer.pad_token is None:  # decoder tokenizers often have none; sequence classification needs one
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    model.eval()
    if quant != "none":
        _tune_bitsandbytes(model)
    if not cross and not (path / "modules.json").is_file():
        logger.warning("%s is neither a cross-encoder nor a sentence-transformers folder; zero-shot "
                       "scoring uses mean-pooled embeddings", path)
    ids = base_model_ids(path)
    loaded = LoadedBase(
        model=model,
        tokenizer=tokenizer,
        device=device,
        quantization=quant,
        is_sentence_encoder=not cross,
        model_id=ids[0],
        legacy_id=ids[1],
        pooling=_pooling_mode(path),
        head_modules=_head_modules(model),
        max_seq_len=spec.max_seq_len,
        footprint_bytes=int(model.get_memory_footprint()),
    )
    logger.info(
        "base model %s: device=%s quantization=%s kind=%s footprint=%.0fMB",
        loaded.model_id, device, quant, "sentence-encoder" if loaded.is_sentence_encoder else "cross-encoder",
        loaded.footprint_bytes / 1e6,
    )
    return loaded


def _int8_parts(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(CB, SCB) of a Linear8bitLt: on its weight until the first forward, then on `module.state`
    (bitsandbytes moves them there); None when it holds neither. A peft LoRA wrapper is read through its
    `base_layer`."""
    layer = getattr(module, "base_layer", module)
    for holder in (layer.weight, getattr(layer, "state", None)):
        cb, scb = getattr(holder, "CB", None), getattr(holder, "SCB", None)
        if cb is not None and scb is not None:
            return cb, scb
    return None


def dequantized_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of every bitsandbytes-quantized Linear weight of `model`, keyed by module name.

    A LoRA-wrapped layer (`...query.base_layer`) is keyed by the layer's own name (`...query`), so the keys
    match the module names of a plain copy of the base. Empty when nothing is quantized.
    """
    out: dict[str, torch.Tensor] = {}
    quantized = [(n, m) for n, m in model.named_modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
    if not quantized:
        return out
    import bitsandbytes.functional as bnbf

    for name, module in quantized:
        w = module.weight
        if type(module).__name__ == "Linear4bit":
            dense = bnbf.dequantize_4bit(w.data, w.quant_state)
        elif (scaled := _int8_parts(module)) is not None:
            dense = bnbf.int8_vectorwise_dequant(*scaled)
        elif w.data.dtype == torch.int8:  # never read raw int8 codes as weights
            raise RuntimeError(f"{name}: int8 weights without their scales (CB/SCB) cannot be dequantized")
        else:  # int8 weights not yet quantized (never run) still hold their fp16/fp32 values
            dense = w.data
        key = name[: -len(".base_layer")] if name.endswith(".base_layer") else name
        out[key] = dense.detach().to("cpu", torch.float32).contiguous()
    return out
