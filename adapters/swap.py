"""Hot-swap mechanics on one Ranker: stage, probe, activate, retire. No threads, no I/O.

A version is added under a fresh, version-unique adapter name (`<version>__<n>`; a Ranker never
reuses names, so a version loaded twice gets `v0003__1` then `v0003__4`), scored once on a probe
batch, and only then made active; the adapter it replaces is deleted afterwards. Anything that fails
before activation removes the staged adapter and raises `SwapRefused`, leaving the served adapter as
it was.

`AdapterSwapper` is not thread-safe by itself: its owner (the scorer's worker thread) calls it between
two batches, which is what makes the switch atomic for requests.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adapters.errors import AdapterNameTaken, SwapRefused
from adapters.lora_config import refusal
from adapters.ranker import Ranker

__all__ = ["BASE", "PROBE_PAIRS", "AdapterSwapper", "Staged"]

log = logging.getLogger(__name__)

BASE = "base"
"""The version name of "no adapter" (the zero-shot base), as the registry spells it."""

PROBE_PAIRS: tuple[tuple[str, str], ...] = (
    ("running shoes", "Lightweight mesh running shoe with cushioned sole"),
    ("running shoes", "Stainless steel kitchen knife set, 5 pieces"),
    ("wireless headphones", "Bluetooth over-ear headphones with noise cancelling"),
    ("", "An item with an empty query"),
)
"""A small fixed batch every version must score with finite values before it may serve."""

_MAX_NAME_TRIES = 1000


@dataclass(frozen=True)
class Staged:
    """A version loaded into the ranker: `name` is its adapter name, None for the base."""

    version: str
    name: str | None


class AdapterSwapper:
    """Swaps the active adapter of `ranker`; `served` is what `ranker.score` uses now."""

    def __init__(self, ranker: Ranker, probe_pairs: Sequence[tuple[str, str]] = PROBE_PAIRS) -> None:
        if ranker.active is not None:
            raise SwapRefused(f"the ranker already has an active adapter {ranker.active!r}; start from the base")
        self.ranker = ranker
        self.probe_pairs = list(probe_pairs)
        self._counter = itertools.count(1)
        self._served = Staged(BASE, None)

    @property
    def served(self) -> Staged:
        return self._served

    def stage(self, version: str, state: dict[str, torch.Tensor], peft_config: dict[str, Any]) -> Staged:
        """Add `version`'s weights under a new unique name (not active yet). `BASE` stages nothing."""
        if version == BASE:
            return Staged(BASE, None)
        why = refusal(peft_config, self.ranker.base.identity)
        if why:
            raise SwapRefused(f"version {version} {why}")
        for _ in range(_MAX_NAME_TRIES):
            name = f"{version}__{next(self._counter)}"
            try:
                self.ranker.add_adapter(name, state, peft_config)
            except AdapterNameTaken:
                continue  # used by someone else on this ranker: take the next number
            except Exception as exc:
                raise SwapRefused(f"version {version} cannot be loaded into the model: {exc}") from exc
            return Staged(version, name)
        raise SwapRefused(f"no free adapter name for version {version}")

    def probe(self, staged: Staged) -> np.ndarray:
        """Score the probe batch with `staged`; raise SwapRefused unless every score is finite."""
        try:
            scores = self.ranker.score_pairs(self.probe_pairs, adapter=staged.name)
        except Exception as exc:
            raise SwapRefused(f"version {staged.version} failed its probe batch: {exc}") from exc
        if scores.shape != (len(self.probe_pairs),) or not np.all(np.isfinite(scores)):
            raise SwapRefused(f"version {staged.version} gives non-finite probe scores {scores.tolist()}")
        return scores

    def activate(self, staged: Staged) -> Staged:
        """Make `staged` the active adapter; returns the one it replaced (still loaded)."""
        old = self._served
        self.ranker.set_active(staged.name)
        self._served = staged
        return old

    def retire(self, old: Staged) -> None:
        """Delete a replaced (or refused) adapter; the base and the served adapter are never deleted."""
        if old.name is None or old.name == self._served.name:
            return
        try:
            self.ranker.delete_adapter(old.name)
        except Exception:  # a leftover adapter costs memory, not correctness
            log.exception("could not delete adapter %s of version %s", old.name, old.version)

    def swap(self, version: str, state: dict[str, torch.Tensor], peft_config: dict[str, Any]) -> Staged:
        """Stage, probe, activate, then retire the old adapter; on any failure the old one keeps serving."""
        staged = self.stage(version, state, peft_config)
        try:
            self.probe(staged)
        except SwapRefused:
            self.retire(staged)
            raise
        old = self.activate(staged)
        self.retire(old)
        log.info("adapter %s (version %s) active; retired %s", staged.name or BASE, version, old.name or BASE)
        return staged
