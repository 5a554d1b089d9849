"""The forward passes of `adapters.ranker.Ranker` (a mixin): tokenizing, pair logits, and the zero-shot
cosine of the frozen base's pooled embeddings with its per-text cache."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from peft import PeftModel

from adapters.base import LoadedBase

__all__ = ["EMBED_CACHE_SIZE", "RESIDUAL_SCALE", "RankerForward"]

RESIDUAL_SCALE = 5.0
"""Weight of the zero-shot cosine in an adapter's score on a sentence-encoder base. Cosines of related
products differ by 0.1-0.3, so this puts them 0.5-1.5 logits apart: a ranking the head can correct."""
EMBED_CACHE_SIZE = 20_000  # frozen base embeddings kept (384 floats each for MiniLM: about 30 MB)


class RankerForward:
    """Forward passes over `_peft`; the Ranker provides the state below and holds its lock around calls."""

    base: LoadedBase
    batch_size: int
    _peft: PeftModel
    _embeddings: OrderedDict[str, torch.Tensor]
    _scales: dict[str, float]
    _lock: contextlib.AbstractContextManager[bool]

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def _restore_peft_active(self) -> None:
        raise NotImplementedError

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm pooled embeddings of the bare base (what zero-shot cosine uses), cached; float32."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        with self._lock:
            self._cosine(texts, texts)  # fills the cache
            return torch.stack([self._embeddings[t] for t in texts]).float().cpu().numpy()

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self._peft.training
        self._peft.eval()
        try:
            yield
        finally:
            if was_training:
                self._peft.train()

    def _tokenize(self, first: list[str], second: list[str] | None = None) -> dict[str, torch.Tensor]:
        enc = self.base.tokenizer(
            first, second, padding=True, truncation=True, max_length=self.base.max_seq_len, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def _pair_logits(self, queries: list[str], texts: list[str]) -> torch.Tensor:
        logits = self._peft(**self._tokenize(queries, texts)).logits
        return logits[:, 0].float()

    def _batched_logits(self, queries: list[str], texts: list[str]) -> torch.Tensor:
        b = self.batch_size
        return torch.cat([self._pair_logits(queries[i : i + b], texts[i : i + b]) for i in range(0, len(queries), b)])

    def _zero_shot(self, queries: list[str], texts: list[str]) -> torch.Tensor:
        if self.base.is_sentence_encoder:
            return self._cosine(queries, texts)
        with self._peft.disable_adapter():
            out = self._batched_logits(queries, texts)
        self._restore_peft_active()  # disable_adapter's exit marks the active adapter trainable again
        return out

    def _residual(self, queries: list[str], texts: list[str], name: str) -> torch.Tensor | None:
        """The zero-shot part of an adapter's score (None on a cross-encoder base); never has gradients."""
        if not self.base.is_sentence_encoder:
            return None
        with torch.no_grad():
            return self._scales.get(name, RESIDUAL_SCALE) * self._cosine(queries, texts)

    def _cosine(self, queries: list[str], texts: list[str]) -> torch.Tensor:
        """Cosine of the bare base's pooled embeddings, per pair; embeddings come from the cache."""
        cache = self._embeddings
        missing = [t for t in dict.fromkeys([*queries, *texts]) if t not in cache]
        if missing:
            with self._eval_mode(), torch.no_grad(), self._peft.disable_adapter():
                fresh = self._embed(missing)
            self._restore_peft_active()  # disable_adapter's exit marks the active adapter trainable again
            cache.update(zip(missing, fresh, strict=True))
        for t in (*queries, *texts):
            cache.move_to_end(t)
        qe = torch.stack([cache[q] for q in queries])
        te = torch.stack([cache[t] for t in texts])
        while len(cache) > EMBED_CACHE_SIZE:
            cache.popitem(last=False)
        return (qe * te).sum(dim=1)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        body = getattr(self._peft.get_base_model(), self.base.model.base_model_prefix)
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            enc = self._tokenize(texts[i : i + self.batch_size])
            hidden = body(**enc).last_hidden_state.float()
            if self.base.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)
