"""The CPU serving fast path: one version's LoRA merged into a dequantized copy of the base, then made fast.

Training keeps the 4/8-bit frozen base (`adapters.ranker`). For serving on CPU, dequantizing those very
weights to fp32 (so the served model is the trained one, not a fresh fp32 download) and merging the LoRA
into them runs the same ranking several times faster than bitsandbytes, which dequantizes its weights in
every forward. `merged-bf16` then runs the encoder's matrix products in bf16 (autocast), `merged-int8`
quantizes every `nn.Linear` with PyTorch's dynamic int8.

`FastBase` is built once per scorer (the dequantized template, the bare encoder for zero-shot embeddings,
the caches); `FastBase.build(version, ...)` makes one `FastModel` per version, off the request path (the
scorer builds it in the thread that asked for the swap). A `FastModel` is immutable once built; a scorer
switches by replacing its reference between two batches.

Scoring caches each text's tokens (`adapters.pair_encoder.PairEncoder`: LRU keyed by text, pairs assembled
by the tokenizer's own post-processor, so they equal a tokenizer call) and each text's frozen base embedding,
and packs the pairs of a round into forwards by token length, so short pairs are not padded to the longest.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft import get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from adapters.base import HEAD_MODULE_NAMES, dequantized_weights, load_base
from adapters.config import SERVING_PATHS, ModelSpec, ServingPath
from adapters.errors import AdapterError, SwapRefused
from adapters.lora_config import refusal
from adapters.pair_encoder import CACHE_SIZE, PairEncoder, by_length
from adapters.ranker import Ranker, config_from_dict

__all__ = ["FAST_PATHS", "SERVING_PATHS", "FastBase", "FastModel", "FastPathUnavailable",
           "ServingPath", "cpu_has_native_bf16", "resolve_serving_path"]

log = logging.getLogger(__name__)

FAST_PATHS = ("merged-int8", "merged-bf16", "merged-fp32")
CPU_AUTO_PATHS = {True: "merged-bf16", False: "merged-fp32"}
"""What `auto` means on CPU, by whether the CPU computes bf16 natively (`cpu_has_native_bf16`), chosen by
`ranktune bench score` (README, "CPU serving paths"). merged-fp32 scores equal the nf4 path's (within 1e-6,
so NDCG is unchanged); merged-bf16 ran 1.95 times as fast here, with NDCG@10 within 0.002 of nf4 on a
strong random adapter (unit test) where merged-int8 moved it by about 0.02, so int8 stays opt-in. Without
native bf16 the bf16 products are emulated: fp32 is the default there."""
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
BASE = "base"
_PEFT_PREFIX = "base_model.model."


class FastPathUnavailable(AdapterError, RuntimeError):
    """The fast path cannot serve this model (not on CPU, or no such path)."""


def cpu_has_native_bf16(capabilities: Mapping[str, Any] | None = None) -> bool:
    """Whether this CPU has bf16 instructions: x86 `avx512_bf16` or `amx_bf16`, ARM `bf16` or `sve_bf16`, as
    PyTorch's own CPU probe reports them (`torch.cpu.get_capabilities()`, or the `capabilities` given)."""
    caps = capabilities
    if caps is None:
        try:
            caps = torch.cpu.get_capabilities()
        except (AttributeError, RuntimeError):  # a torch without the probe: fp32
            return False
    return any(bool(caps.get(flag)) for flag in _NATIVE_BF16_FLAGS)


def resolve_serving_path(path: ServingPath | str, device: torch.device, *, native_bf16: bool | None = None) -> str:
    """`auto` -> on CPU merged-bf16 where the CPU has native bf16 (`native_bf16`, read from the CPU when None)
    and merged-fp32 elsewhere; `quantized` off CPU. A merged path off CPU is FastPathUnavailable."""
    if path not in SERVING_PATHS:
        raise FastPathUnavailable(f"unknown serving path {path!r} (expected one of {SERVING_PATHS})")
    on_cpu = device.type == "cpu"
    native = on_cpu and path in ("auto", "merged-bf16") and (
        cpu_has_native_bf16() if native_bf16 is None else native_bf16)
    if path == "auto":
        return CPU_AUTO_PATHS[native] if on_cpu else "quantized"
    if path == "merged-bf16" and on_cpu and not native:
        log.warning("serving path merged-bf16 on a CPU without bf16 instructions: its bf16 products are "
                    "emulated and may be slower than merged-fp32 (auto would choose merged-fp32 here)")
    if path in FAST_PATHS and not on_cpu:
        raise FastPathUnavailable(f"serving path {path} runs on CPU only; this model is on {device} "
                                  "(use quantized or auto)")
    return str(path)


class FastBase:
    """The dequantized fp32 template of a ranker's base, the fast bare encoder, and the shared caches."""

    def __init__(self, ranker: Ranker, spec: ModelSpec, path: str, *, batch_size: int = 64) -> None:
        if path not in FAST_PATHS:
            raise FastPathUnavailable(f"no fast serving path {path!r} (expected one of {FAST_PATHS})")
        if ranker.device.type != "cpu":
            raise FastPathUnavailable(f"the merged serving paths run on CPU; this model is on {ranker.device}")
        self.path = path
        self.ranker = ranker
        self.batch_size = batch_size
        plain = load_base(spec.model_copy(update={"quantization": "none", "device": "cpu"}))
        with ranker._lock:  # the served weights, read once: the model every version was trained on
            weights = dequantized_weights(ranker.model.get_base_model())
        modules = dict(plain.model.named_modules())
        with torch.no_grad():
            for name, w in weights.items():
                target = modules[name].weight
                if target.shape != w.shape:
                    raise FastPathUnavailable(f"dequantized {name} has shape {tuple(w.shape)}, "
                                              f"the plain base {tuple(target.shape)}")
                target.copy_(w)
        self.template = plain.model.eval()
        self.encoder = PairEncoder(plain.tokenizer, spec.max_seq_len)
        self.sentence = ranker.base.is_sentence_encoder
        self.pooling = ranker.base.pooling
        prefix = self.template.base_model_prefix
        # Zero-shot embeddings stay fp32 (int8 moved cosines by up to 0.15): they are cached per text, so
        # they cost one forward per new text, not per request.
        self._body = copy.deepcopy(getattr(self.template, prefix)).eval() if self.sentence else None
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}  # expected adapter weights per LoRA config
        log.info("fast serving path %s ready (%d dequantized layers from the %s base)", path, len(weights),
                 ranker.base.quantization)

    def finish(self, module: torch.nn.Module) -> torch.nn.Module:
        """Make a merged fp32 module fast for this path (bf16, dynamic int8 Linear, or as is), in eval mode."""
        module.eval().requires_grad_(False)
        if self.path == "merged-bf16":
            head = {name for name, _ in module.named_modules() if name.split(".")[-1] in HEAD_MODULE_NAMES}
            for name, layer in list(module.named_modules()):
                if name in head:  # the head stays fp32, outside autocast: scores keep fp32 resolution
                    parent, _, attr = name.rpartition(".")
                    setattr(module.get_submodule(parent) if parent else module, attr, _Fp32(layer))
                elif isinstance(layer, torch.nn.Linear) and not any(name.startswith(h + ".") for h in head):
                    # new tensors: a merged copy shares its unchanged ones with the template
                    for pname, param in list(layer.named_parameters(recurse=False)):
                        setattr(layer, pname, torch.nn.Parameter(param.detach().to(torch.bfloat16),
                                                                 requires_grad=False))
            module = Bf16Autocast(module)
        elif self.path == "merged-int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
                # per-channel weight scales: max score error 0.03 against 0.8 with one scale per tensor
                qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
                module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear: qconfig}, inplace=True)
        return module

    def build(self, version: str, state: dict[str, torch.Tensor], peft_config: dict[str, Any]) -> FastModel:
        """The fast model of `version` (`base`: no adapter); SwapRefused if it does not fit or fails its probe."""
        try:
            model, scale = self._merged(version, state, peft_config)
        except SwapRefused:
            raise
        except Exception as exc:
            raise SwapRefused(f"version {version} cannot be merged for serving: {exc}") from exc
        return FastModel(version, model, scale, self)

    def _merged(self, version: str, state: dict[str, torch.Tensor],
                peft_config: dict[str, Any]) -> tuple[torch.nn.Module | None, float | None]:
        if version == BASE:
            return (None, None) if self.sentence else (self.finish(copy.deepcopy(self.template)), None)
        why = refusal(peft_config, self.ranker.base.identity)
        if why:
            raise SwapRefused(f"version {version} {why}")
        scale = self.ranker.scale_for(peft_config)
        lora = config_from_dict(peft_config)
        self._check_keys(version, state, lora)
        simple = not (lora.use_dora or lora.rank_pattern or lora.alpha_pattern or lora.fan_in_fan_out)
        merged = self._merge_lora(state, lora) if simple else self._merge_peft(state, lora, version)
        return self.finish(merged), (scale if self.sentence else None)

    def _check_keys(self, version: str, state: Mapping[str, torch.Tensor], lora: Any) -> None:
        """SwapRefused unless `state` holds exactly the weights that `lora` gives this base, in their shapes
        (what `Ranker.add_adapter` requires of the quantized path): a merge would keep the template's values
        for a missing layer or head and serve them."""
        key = repr(sorted(lora.to_dict().items(), key=lambda kv: kv[0]))
        expected = self._shapes.get(key)
        if expected is None:
            probe = get_peft_model(copy.deepcopy(self.template), copy.deepcopy(lora), adapter_name="serve")
            weights = get_peft_model_state_dict(probe, adapter_name="serve", save_embedding_layers=False)
            expected = {k: tuple(v.shape) for k, v in weights.items()}
            self._shapes[key] = expected
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        bad = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
        if missing or extra or bad:
            raise SwapRefused(f"version {version}: weights do not fit the base (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, wrong shape {bad[:3]})")

    def _merge_lora(self, state: dict[str, torch.Tensor], lora: Any) -> torch.nn.Module:
        """W + (alpha/r) * B @ A for every LoRA layer, head weights replaced, into a copy of the template.

        The copy shares every tensor with the template and replaces (never writes into) the ones that change,
        so it costs the changed layers only; the template is left as it was.
        """
        shared = {id(t): t for t in self.template.parameters()}
        shared.update({id(t): t for t in self.template.buffers()})
        model = copy.deepcopy(self.template, memo=shared)
        modules = dict(model.named_modules())
        scaling = lora.lora_alpha / (lora.r ** 0.5 if lora.use_rslora else lora.r)
        used: set[str] = set()
        for key in state:
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")].removeprefix(_PEFT_PREFIX)
            a, b = state[key], state[key.replace(".lora_A.", ".lora_B.")]
            layer = modules[name]
            merged = layer.weight.detach() + scaling * (b.float() @ a.float())
            layer.weight = torch.nn.Parameter(merged, requires_grad=False)
            used.update((key, key.replace(".lora_A.", ".lora_B.")))
        for key, value in state.items():
            if key in used:
                continue
            name, _, attr = key.removeprefix(_PEFT_PREFIX).rpartition(".")
            name = name.replace(".modules_to_save.serve", "")
            if name not in modules or not hasattr(modules[name], attr):
                raise SwapRefused(f"adapter weight {key} has no place in the base")
            setattr(modules[name], attr, torch.nn.Parameter(value.detach().float().clone(), requires_grad=False))
        return model

    def _merge_peft(self, state: dict[str, torch.Tensor], lora: Any, version: str) -> torch.nn.Module:
        """peft's own merge (DoRA, per-layer ranks): slower, for what `_merge_lora` does not cover."""
        peft = get_peft_model(copy.deepcopy(self.template), lora, adapter_name="serve")
        result = set_peft_model_state_dict(peft, state, adapter_name="serve")
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise SwapRefused(f"version {version}: unexpected keys {unexpected[:3]}")
        return peft.merge_and_unload()

    def logits(self, model: torch.nn.Module, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Head logits of `pairs`, in forwards of `batch_size` grouped by token length; in pair order."""
        encoded = self.encoder.encode([q for q, _ in pairs], [t for _, t in pairs])
        out = torch.empty(len(pairs), dtype=torch.float32)
        with torch.inference_mode():
            for group in by_length(encoded, self.batch_size):
                logits = model(**self.encoder.tensors([encoded[k] for k in group])).logits
                out[torch.tensor(group)] = logits[:, 0].float()
        return out

    def cosine(self, queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Cosine of the bare base's pooled embeddings per pair (embeddings cached per text)."""
        e = self.embeddings([*queries, *texts])
        return (e[: len(queries)] * e[len(queries):]).sum(dim=1)

    def embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm pooled embeddings of the bare base, one row per text (cached per text, LRU)."""
        # what the cache holds is taken in the first section: another thread (a swap's probe beside the
        # scorer's worker) may evict it before the second
        with self._lock:
            have = {t: self._embeddings[t] for t in dict.fromkeys(texts) if t in self._embeddings}
        missing = [t for t in dict.fromkeys(texts) if t not in have]
        if missing:
            have.update(zip(missing, self._embed(missing), strict=True))
        with self._lock:
            self._embeddings.update((t, have[t]) for t in missing)
            for t in have:
                if t in self._embeddings:
                    self._embeddings.move_to_end(t)
            while len(self._embeddings) > CACHE_SIZE:
                self._embeddings.popitem(last=False)
        return torch.stack([have[t] for t in texts])

    def _embed(self, texts: list[str]) -> list[torch.Tensor]:
        assert self._body is not None
        encoded = self.encoder.encode(texts)
        out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        with torch.inference_mode():
            for group in by_length(encoded, self.batch_size):
                enc = self.encoder.tensors([encoded[k] for k in group])
                hidden = self._body(**enc).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                for k, row in zip(group, torch.nn.functional.normalize(pooled, dim=-1), strict=True):
                    out[k] = row.clone()
        return out


class Bf16Autocast(torch.nn.Module):
    """A model whose encoder `nn.Linear` weights are bf16, run under CPU autocast: the matrix products in
    bf16, while embeddings, LayerNorm, the residual stream and the head (`_Fp32`) stay fp32. Against the
    whole model cast to bf16 (as fast here), this halved the NDCG@10 change on strong random adapters (at
    most 0.001 against 0.0023 on 30 judged queries)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(**inputs)


class _Fp32(torch.nn.Module):
    """A head module run in fp32 with autocast off (its input cast up), so that scores are not rounded to
    bf16's 8-bit mantissa (steps of 0.008 near 1 would tie items of a 50-item ranking)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        up = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast("cpu", enabled=False):
            return self.module(*up, **kwargs)


@dataclass(frozen=True)
class FastModel:
    """One version on the fast path: merged model (None = zero-shot cosine only) and its residual weight."""

    version: str
    model: torch.nn.Module | None
    scale: float | None
    base: FastBase

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query, text) pairs, float32, like `Ranker.score_pairs` with this version active."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        queries, texts = [q for q, _ in pairs], [t for _, t in pairs]
        if self.model is None:
            return self.base.cosine(queries, texts).numpy()
        out = self.base.logits(self.model, pairs)
        if self.scale is not None:
            out = out + self.scale * self.base.cosine(queries, texts)
        return out.numpy().astype(np.float32)

    def probe(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Score `pairs`; SwapRefused unless every score is finite."""
        try:
            scores = self.score_pairs(pairs)
        except Exception as exc:
            raise SwapRefused(f"version {self.version} failed its probe batch: {exc}") from exc
        if scores.shape != (len(pairs),) or not np.all(np.isfinite(scores)):
            raise SwapRefused(f"version {self.version} gives non-finite probe scores {scores.tolist()}")
        return scores
