"""The ranktune error family.

`RanktuneError` is the one root; each package adds a small family under it, and each family also
subclasses the matching built-in so callers that only know Python's errors still catch them.
It lives here because `adapters` is the lowest layer: `storage` and `daemon` import it, never the reverse.
"""

from __future__ import annotations


class RanktuneError(Exception):
    """Root of every error ranktune raises on purpose."""


class AdapterError(RanktuneError):
    """Something about a model, an adapter or its training went wrong."""


class BaseModelError(AdapterError, OSError):
    """The base model folder is missing, unreadable or not a supported architecture."""


class QuantizationError(AdapterError, ValueError):
    """The requested quantization cannot be used on this device or build."""


class ArtifactError(AdapterError):
    """An adapter artifact on disk is unusable."""


class ArtifactCorrupt(ArtifactError, ValueError):
    """An adapter artifact fails its checksum or has unexpected files."""


class ArtifactMissing(ArtifactError, FileNotFoundError):
    """An adapter artifact folder or one of its files does not exist."""


class TrainingError(AdapterError, RuntimeError):
    """Training could not produce a candidate (too little data, diverged, crashed)."""


class NotEnoughData(TrainingError):
    """There are too few labelled query groups to train or evaluate."""


class SwapRefused(AdapterError, RuntimeError):
    """A hot-swap was refused (load failed, probe scores not finite); the old adapter keeps serving."""


class DeviceUnavailable(AdapterError, RuntimeError):
    """The requested device (e.g. cuda) is not available on this machine."""


class AdapterNotFound(AdapterError, LookupError):
    """No adapter of that name is loaded in the ranker."""


class AdapterNameTaken(AdapterError, ValueError):
    """An adapter name was already used in this ranker; names are never reused."""


class AdapterMismatch(AdapterError, ValueError):
    """Adapter weights or config do not fit the loaded base model."""


class InvalidVersionName(ArtifactError, ValueError):
    """An adapter version name is malformed (it must match `VERSION_RE`)."""


class ArtifactExists(ArtifactError, FileExistsError):
    """An adapter version folder already exists; versions are immutable."""
