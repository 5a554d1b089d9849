"""Token ids of (query, text) pairs from per-text cached encodings, equal to a tokenizer call (the CPU
serving fast path's tokenization, `adapters.fast`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["CACHE_SIZE", "Encoded", "PairEncoder", "by_length"]

CACHE_SIZE = 50_000  # texts (tokens or embeddings) kept per cache
Encoded = tuple[list[int], list[int]]
"""One sequence's (input_ids, token_type_ids), special tokens included."""


class PairEncoder:
    """Token ids of (query, text) pairs from per-text cached encodings; equal to `tokenizer(q, t, truncation)`.

    The cache keeps each text's encoding cut to `max_seq_len` tokens, and its full length. Longest-first
    truncation of a pair depends on both full lengths only when both sides are longer than half the room
    and one was cut: that pair is encoded whole instead (before, 273 of 900 random long pairs came out one
    token off). Thread-safe (one lock around the cache). Falls back to calling the tokenizer when it has no
    Rust backend.
    """

    def __init__(self, tokenizer: Any, max_seq_len: int, cache_size: int = CACHE_SIZE) -> None:
        self._hf = tokenizer
        self.max_seq_len = max_seq_len
        self.cache_size = cache_size
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tk: Any = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._tk = Tokenizer.from_str(backend.to_str())
            self._tk.enable_truncation(max_seq_len, strategy="longest_first")
            self._tk.no_padding()
            self._full = Tokenizer.from_str(backend.to_str())  # single texts, whole: their true length
            self._full.no_truncation()
            self._full.no_padding()
            self._half = (max_seq_len - self._tk.num_special_tokens_to_add(True)) // 2
        self._types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self._left = getattr(tokenizer, "padding_side", "right") == "left"
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _cached(self, texts: Sequence[str]) -> list[tuple[Any, int]]:
        """(encoding cut to `max_seq_len`, full length in tokens) per text."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            self.misses += len(missing)
            self.hits += len(texts) - len(missing)
            if missing:
                encoded = self._full.encode_batch(missing, add_special_tokens=False)
                for text, enc in zip(missing, encoded, strict=True):
                    n = len(enc.ids)
                    if n > self.max_seq_len:
                        enc.truncate(self.max_seq_len)
                    self._cache[text] = (enc, n)
            out = []
            for t in texts:
                self._cache.move_to_end(t)
                out.append(self._cache[t])
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return out

    def encode(self, firsts: Sequence[str], seconds: Sequence[str] | None = None) -> list[Encoded]:
        """Per pair (or per single text): [input_ids, token_type_ids] with special tokens, truncated."""
        if self._tk is None:
            enc = self._hf(list(firsts), list(seconds) if seconds is not None else None, truncation=True,
                           max_length=self.max_seq_len)
            types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
            return [(list(i), list(t)) for i, t in zip(enc["input_ids"], types, strict=True)]
        a = self._cached(firsts)
        if seconds is None:
            return [(e.ids, e.type_ids) for e in (self._tk.post_process(x, None, True) for x, _ in a)]
        out: list[Encoded] = []
        for (x, nx), (y, ny), q, t in zip(a, self._cached(seconds), firsts, seconds, strict=True):
            if max(nx, ny) > self.max_seq_len and min(nx, ny) >= self._half:  # the cut would change the split
                e = self._tk.encode(q, t)
            else:
                e = self._tk.post_process(x, y, True)
            out.append((e.ids, e.type_ids))
        return out

    def tensors(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Pad a group of `encode` results to its longest member: the model's keyword inputs."""
        n = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), n), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(encoded), n), dtype=torch.long)
        mask = torch.zeros((len(encoded), n), dtype=torch.long)
        for k, (i, t) in enumerate(encoded):
            sl = slice(n - len(i), n) if self._left else slice(0, len(i))
            ids[k, sl] = torch.tensor(i)
            types[k, sl] = torch.tensor(t)
            mask[k, sl] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self._types:
            out["token_type_ids"] = types
        return out


def by_length(encoded: Sequence[Encoded], batch: int) -> list[list[int]]:
    """Indices grouped into forwards of at most `batch`, shortest sequences together."""
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    return [order[i:i + batch] for i in range(0, len(order), batch)]
