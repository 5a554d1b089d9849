"""The Ranker: one frozen base model with zero or more named LoRA adapters, scoring (query, text) pairs.

peft keeps one copy of the head per adapter (`modules_to_save`), so switching the active adapter switches
the LoRA weights and the head together. A PeftModel cannot exist without an adapter, so the ranker always
holds a reserved, never-active rank-1 adapter; "no adapter" (`None`) runs the base with every adapter
disabled: cosine of pooled embeddings for a sentence encoder, the base's own head for a cross-encoder.

Every adapter starts exactly where the base is, so training can only move away from a known-good
ranker and early stopping can always fall back to it:
- on a cross-encoder base, LoRA starts at zero (peft's B = 0) and the head is the base's own;
- on a sentence-encoder base, an adapter scores `RESIDUAL_SCALE * zero-shot cosine + head logit`, with
  the head initialised at zero. The cross-encoder learns a correction to the zero-shot ranking rather
  than a ranking from nothing (a head trained from scratch on click logs lost to the zero-shot cosine
  in every CPU-sized run). The base's embeddings are frozen, so they are cached per text, across
  adapters and swaps.
The scoring rule travels with an adapter's config (`ranktune_scoring`); a ranker refuses an adapter
whose rule is not its own.

A Ranker is shared by one scoring thread and an occasional swapper, so every public method takes one
re-entrant lock: a swap never lands in the middle of a batch.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Final

import numpy as np
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import ModulesToSaveWrapper, get_peft_model_state_dict, set_peft_model_state_dict

from adapters.base import LoadedBase, default_lora_targets, load_base
from adapters.config import LoraSpec, ModelSpec
from adapters.errors import AdapterMismatch, AdapterNameTaken, AdapterNotFound
from adapters.lora_config import QUANTIZATION_KEY, SCORING_KEY, config_from_dict, jsonable
from adapters.ranker_forward import RESIDUAL_SCALE, RankerForward

__all__ = ["ACTIVE", "RESIDUAL_SCALE", "Ranker", "config_from_dict"]

logger = logging.getLogger(__name__)


class _Active(enum.Enum):
    ACTIVE = "active"


ACTIVE: Final = _Active.ACTIVE
"""Sentinel for `Ranker.score(adapter=...)`: use whatever adapter is active."""

_RESIDUAL_RULE = re.compile(r"^cosine\*([0-9.eE+-]+)\+head$")
_RESERVED = "__zero_shot__"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_FINAL_HEADS = ("classifier", "score")


class Ranker(RankerForward):
    """A cross-encoder ranker: `Ranker.load(spec, lora)`, then `score`, adapters by name."""

    def __init__(self, base: LoadedBase, lora: LoraSpec, *, batch_size: int = 64) -> None:
        self.base = base
        self.lora = lora
        self.batch_size = batch_size
        self._lock = threading.RLock()
        self._used: set[str] = set()
        self._active: str | None = None
        self._training: str | None = None
        targets = lora.target_modules or default_lora_targets(base.model)
        self._targets: list[str] | None = list(targets) if targets else None
        self._exclude = self._head_children(base.model)
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._scales: dict[str, float] = {}  # residual weight per adapter (sentence-encoder bases only)
        reserved = self._lora_config(r=1, modules_to_save=[])
        self._peft: PeftModel = get_peft_model(base.model, reserved, adapter_name=_RESERVED)
        self._peft.eval()

    @classmethod
    def load(cls, spec: ModelSpec, lora: LoraSpec, *, batch_size: int = 64) -> Ranker:
        """Load the base (see `base.load_base`) and wrap it; no adapters yet, `active` is None."""
        return cls(load_base(spec), lora, batch_size=batch_size)

    # ----- adapters -------------------------------------------------------------------------------

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(n for n in self._peft.peft_config if n != _RESERVED)

    @property
    def active(self) -> str | None:
        return self._active

    @property
    def model(self) -> PeftModel:
        return self._peft

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def scoring(self) -> str:
        """How an adapter's score is formed on this base (recorded in, and checked against, its config)."""
        return f"cosine*{RESIDUAL_SCALE:g}+head" if self.base.is_sentence_encoder else "head"

    def new_adapter(self, name: str) -> None:
        """Add a fresh adapter for training; it scores exactly like the base until it is trained.

        LoRA is initialised by peft (B = 0). A cross-encoder keeps its own trained head; on an embedding
        base the final head layer is zeroed, so the score is the scaled zero-shot cosine alone.
        """
        with self._lock:
            self._claim(name)
            self._peft.add_adapter(name, self._lora_config(self.lora.r, modules_to_save=None))
            if self.base.is_sentence_encoder:
                with torch.no_grad():
                    for head in self._final_head_copies(name):
                        for mod in head.modules():
                            if isinstance(mod, torch.nn.Linear):
                                mod.weight.zero_()
                                if mod.bias is not None:
                                    mod.bias.zero_()
            self._restore_peft_active()

    def add_adapter(self, name: str, state: dict[str, torch.Tensor], peft_config: dict[str, Any]) -> None:
        """Add a trained adapter from its weights and config (as `adapter_state`/`peft_config` give them).

        Uses peft's `set_peft_model_state_dict`, never a from-disk loader. The weights must fit exactly
        (same keys and shapes) and its scoring rule must be this ranker's; otherwise AdapterMismatch and
        nothing is added.
        """
        with self._lock:
            scoring = peft_config.get(SCORING_KEY)
            scale = self._scale_of_rule(scoring)
            if scale is None:
                raise AdapterMismatch(f"adapter {name} scores as {scoring!r}; this ranker as {self.scoring!r}")
            self._claim(name)
            cfg = config_from_dict(peft_config)
            try:
                self._peft.add_adapter(name, cfg)
            except (ValueError, KeyError, TypeError) as exc:
                raise AdapterMismatch(f"adapter {name}: config does not fit the base: {exc}") from exc
            try:
                self._load_state(name, state)
            except Exception as exc:  # roll back: the ranker is as it was before the call
                self._restore_peft_active()
                self._peft.delete_adapter(name)
                if isinstance(exc, AdapterMismatch):
                    raise
                raise AdapterMismatch(f"adapter {name}: weights cannot be loaded: {exc}") from exc
            self._scales[name] = scale
            self._restore_peft_active()

    def load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Overwrite an existing adapter's weights (warm start, restoring the best checkpoint)."""
        with self._lock:
            self._require(name)
            self._load_state(name, state)

    def set_active(self, name: str | None) -> None:
        """Choose the adapter `score` uses by default; None is the zero-shot base scorer."""
        with self._lock:
            if name is not None:
                self._require(name)
            self._active = name
            self._restore_peft_active()

    def delete_adapter(self, name: str) -> None:
        """Drop an adapter and its head copy; if it was active, the base scorer becomes active."""
        with self._lock:
            self._require(name)
            if self._training == name:
                raise AdapterMismatch(f"adapter {name} is being trained")
            if self._active == name:
                self._active = None
            self._restore_peft_active()  # so peft never deletes its own active adapter (and warns)
            self._peft.delete_adapter(name)
            self._scales.pop(name, None)

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """LoRA and head weights of `name`, copied to CPU, keyed without the adapter name (peft format)."""
        with self._lock:
            self._require(name)
            state = get_peft_model_state_dict(self._peft, adapter_name=name, save_embedding_layers=False)
            return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}

    def peft_config(self, name: str) -> dict[str, Any]:
        """The adapter's LoraConfig as a JSON-ready dict (what `add_adapter` takes back)."""
        with self._lock:
            self._require(name)
            raw = self._peft.peft_config[name].to_dict()
        out = {k: jsonable(v) for k, v in raw.items()}
        out["inference_mode"] = True
        out["base_model_name_or_path"] = self.base.model_id
        out[QUANTIZATION_KEY] = self.base.quantization
        out[SCORING_KEY] = self._rule(name)
        return out

    def residual_scale(self, name: str) -> float:
        """The weight of the zero-shot cosine in adapter `name`'s score (0.0 on a cross-encoder base)."""
        with self._lock:
            self._require(name)
            return self._scales.get(name, RESIDUAL_SCALE) if self.base.is_sentence_encoder else 0.0

    def set_residual_scale(self, name: str, scale: float) -> None:
        """Set adapter `name`'s residual weight (training learns it; recorded in its `ranktune_scoring`)."""
        with self._lock:
            self._require(name)
            if not self.base.is_sentence_encoder:
                raise AdapterMismatch("a cross-encoder base scores with its head alone: no residual weight")
            if not (0.0 <= scale < 1e3):
                raise ValueError(f"residual scale must be in [0, 1000), got {scale}")
            self._scales[name] = float(scale)

    def scale_for(self, peft_config: dict[str, Any]) -> float:
        """The residual weight an adapter config's scoring rule names (0.0 on a cross-encoder base).

        Raises AdapterMismatch when the rule is not one this ranker scores with (as `add_adapter` does)."""
        scale = self._scale_of_rule(peft_config.get(SCORING_KEY))
        if scale is None:
            rule = peft_config.get(SCORING_KEY)
            raise AdapterMismatch(f"adapter scores as {rule!r}; this ranker as {self.scoring!r}")
        return scale

    def _rule(self, name: str) -> str:
        if not self.base.is_sentence_encoder:
            return "head"
        return f"cosine*{self._scales.get(name, RESIDUAL_SCALE):.6g}+head"

    def _scale_of_rule(self, scoring: Any) -> float | None:
        """The residual weight a `ranktune_scoring` rule names, if this ranker can score that way."""
        if not self.base.is_sentence_encoder:
            return 0.0 if scoring == "head" else None
        m = _RESIDUAL_RULE.match(str(scoring))
        if m is None:
            return None
        try:
            value = float(m.group(1))
        except ValueError:
            return None
        return value if 0.0 <= value < 1e3 else None

    # ----- scoring --------------------------------------------------------------------------------

    def score(
        self, query: str, texts: Sequence[str], adapter: str | _Active | None = ACTIVE
    ) -> np.ndarray:
        """Scores of `texts` for `query` (higher is more relevant), float32, one per text."""
        return self.score_pairs([(query, t) for t in texts], adapter=adapter)

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], adapter: str | _Active | None = ACTIVE
    ) -> np.ndarray:
        """Scores of (query, text) pairs from different requests, in micro-batches of `batch_size`."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        with self._lock, self._eval_mode(), torch.inference_mode():
            name = self._active if adapter is ACTIVE else adapter
            queries = [q for q, _ in pairs]
            texts = [t for _, t in pairs]
            if name is None:
                out = self._zero_shot(queries, texts)
            else:
                self._require(name)
                residual = self._residual(queries, texts, name)  # before the switch: it runs the bare base
                with self._peft_active(name):
                    out = self._batched_logits(queries, texts)
                if residual is not None:
                    out = out + residual
            return out.float().cpu().numpy()

    # ----- training hooks (used by adapters.training) ---------------------------------------------

    @contextlib.contextmanager
    def training(self, name: str) -> Iterator[list[torch.nn.Parameter]]:
        """Put `name` in training: train mode, its LoRA and head trainable; yields those parameters.

        Holds the ranker's lock for the whole block, so a ranker that serves requests must not train
        (the daemon trains in a child process with its own ranker).
        """
        with self._lock:
            self._require(name)
            self._training = name
            try:
                self._peft.set_adapter(name, inference_mode=False)
                params = [p for p in self._peft.parameters() if p.requires_grad]
                self._peft.train()
                yield params
            finally:
                self._training = None
                self._peft.eval()
                self._restore_peft_active()

    def train_logits(self, queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Logits with gradients for the adapter in `training` (one forward, no batching)."""
        if self._training is None:
            raise RuntimeError("train_logits outside Ranker.training()")
        residual = self._residual(list(queries), list(texts), self._training)
        logits = self._pair_logits(list(queries), list(texts))
        return logits if residual is None else logits + residual

    def train_parts(self, queries: Sequence[str], texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(head logits with gradients, zero-shot cosine without) for the adapter in `training`, so the
        caller can learn the residual weight; `train_logits` = logits + residual_scale * cosine."""
        if self._training is None:
            raise RuntimeError("train_parts outside Ranker.training()")
        cosine = None
        if self.base.is_sentence_encoder:
            with torch.no_grad():
                cosine = self._cosine(list(queries), list(texts))
        return self._pair_logits(list(queries), list(texts)), cosine

    # ----- internals ------------------------------------------------------------------------------

    def _lora_config(self, r: int, modules_to_save: list[str] | None) -> LoraConfig:
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=r,
            lora_alpha=self.lora.alpha,
            lora_dropout=self.lora.dropout,
            target_modules=self._targets,
            exclude_modules=self._exclude or None,
            modules_to_save=list(self.base.head_modules) if modules_to_save is None else modules_to_save,
        )

    def _head_children(self, model: torch.nn.Module) -> list[str]:
        # LoRA must not wrap layers inside head modules (e.g. BERT's pooler.dense matches "dense"): those
        # are trained in full as modules_to_save, and peft cannot do both to one layer.
        heads = set(self.base.head_modules)
        out = []
        for name, _ in model.named_modules():
            parts = name.split(".")
            if any(p in heads for p in parts[:-1]) and (self._targets is None or parts[-1] in self._targets):
                out.append(name)
        return out

    def _claim(self, name: str) -> None:
        # peft warns that a name inside its "lora_" key prefix can corrupt loading: refuse those too.
        if not _NAME_RE.match(name) or name in "lora_":
            raise AdapterNameTaken(f"adapter name {name!r} is not allowed (letters, digits, _ and -)")
        if name in self._used:
            raise AdapterNameTaken(f"adapter name {name!r} was already used in this ranker")
        self._used.add(name)

    def _require(self, name: str) -> None:
        if name == _RESERVED or name not in self._peft.peft_config:
            raise AdapterNotFound(f"no adapter {name!r} (loaded: {list(self.adapter_names)})")

    def _load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        expected = get_peft_model_state_dict(self._peft, adapter_name=name, save_embedding_layers=False)
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or extra or bad:
            raise AdapterMismatch(
                f"adapter {name}: weights do not fit the base (missing {missing[:3]}, "
                f"unexpected {extra[:3]}, wrong shape {bad[:3]})"
            )
        result = set_peft_model_state_dict(self._peft, state, adapter_name=name)
        unexpected: list[str] = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise AdapterMismatch(f"adapter {name}: unexpected keys {unexpected[:3]}")

    def _final_head_copies(self, name: str) -> list[torch.nn.Module]:
        return [
            mod.modules_to_save[name] for mod_name, mod in self._peft.named_modules()
            if isinstance(mod, ModulesToSaveWrapper) and name in mod.modules_to_save
            and mod_name.rsplit(".", 1)[-1] in _FINAL_HEADS
        ]

    def _restore_peft_active(self) -> None:
        # peft's own active adapter: the one in training, else ours, else the reserved one. Adapters not
        # in training are always frozen (peft's set_adapter and disable_adapter flip requires_grad).
        target = self._training or self._active or _RESERVED
        self._peft.set_adapter(target, inference_mode=self._training is None)

    @contextlib.contextmanager
    def _peft_active(self, name: str) -> Iterator[None]:
        if self._peft.active_adapter == name:  # the common case: scoring with the active adapter
            yield
            return
        self._peft.set_adapter(name, inference_mode=self._training != name)
        try:
            yield
        finally:
            self._restore_peft_active()
