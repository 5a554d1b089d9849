"""Adapter versions on disk: immutable, checksummed folders written atomically.

A version folder `root/<version>/` holds exactly

    adapter_model.safetensors   LoRA + head weights (peft key format)
    adapter_config.json         the LoraConfig as a dict
    meta.json                   free-form provenance (base model id, metrics, data window...)
    manifest.json               {"files": {name: sha256}, "checksum": sha256 over the sorted entries}

It is written into `root/.tmp-<version>-<uuid>/`, fsynced, and renamed into place, so a crash leaves
either a complete version or a `.tmp-*` folder that `sweep_temp` removes. Loading reads every file once,
checks it against the manifest, and parses the very bytes it checked. Weights are safetensors only:
nothing here unpickles (no torch.load, no peft from-disk loading that could fall back to .bin).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from adapters.errors import ArtifactCorrupt, ArtifactExists, ArtifactMissing, InvalidVersionName

__all__ = [
    "VERSION_RE",
    "ArtifactInfo",
    "LoadedAdapter",
    "load_adapter",
    "remove_version",
    "save_adapter",
    "sweep_temp",
    "validate_version_name",
    "versions_of_run",
]

VERSION_RE = re.compile(r"\Av[0-9]{4,}\Z", re.ASCII)  # \Z: no trailing newline; [0-9]: ASCII digits only
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
META = "meta.json"
MANIFEST = "manifest.json"
_REQUIRED = (WEIGHTS, CONFIG, META)
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    checksum: str


@dataclass(frozen=True)
class LoadedAdapter:
    state: dict[str, torch.Tensor]
    peft_config: dict[str, Any]
    meta: dict[str, Any]
    checksum: str


def validate_version_name(name: str) -> str:
    """Return `name` if it is a version name like `v0001`; raise InvalidVersionName otherwise.

    The pattern admits no separators or dots, so a version can never name a path outside `root`.
    """
    if not isinstance(name, str) or not VERSION_RE.fullmatch(name):
        raise InvalidVersionName(f"invalid adapter version name {name!r} (expected e.g. v0001)")
    return name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _overall(files: dict[str, str]) -> str:
    return _sha256("".join(f"{name}:{files[name]}\n" for name in sorted(files)).encode())


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_adapter(
    root: Path, version: str, state: dict[str, torch.Tensor], peft_config: dict[str, Any], meta: dict[str, Any]
) -> ArtifactInfo:
    """Write a new version folder atomically; refuse (ArtifactExists) if `root/version` exists."""
    validate_version_name(version)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise ArtifactExists(f"adapter version {final} already exists")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    payload = {
        WEIGHTS: save_safetensors(tensors, metadata={"format": "pt"}),
        CONFIG: json.dumps(peft_config, indent=2, sort_keys=True).encode(),
        META: json.dumps(meta, indent=2, sort_keys=True, default=str).encode(),
    }
    files = {name: _sha256(data) for name, data in payload.items()}
    checksum = _overall(files)
    payload[MANIFEST] = json.dumps({"files": files, "checksum": checksum}, indent=2, sort_keys=True).encode()

    tmp = root / f"{_TMP_PREFIX}{version}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, data in payload.items():
            _write(tmp / name, data)
        _fsync_dir(tmp)
        try:
            # rename(2) onto an existing non-empty folder fails, so two writers cannot both win.
            os.rename(tmp, final)
        except OSError as exc:
            raise ArtifactExists(f"adapter version {final} already exists") from exc
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ArtifactInfo(path=final, checksum=checksum)


def load_adapter(root: Path, version: str, expected_checksum: str | None = None) -> LoadedAdapter:
    """Read and verify a version folder; raise ArtifactMissing/ArtifactCorrupt naming the file at fault.

    Refused: a missing folder or file, any file not in the manifest (a `.bin`, `.pt`, anything),
    sub-folders and links, a wrong sha256 for any file or for the whole, and a checksum other than
    `expected_checksum` when one is given (the registry's record).
    """
    validate_version_name(version)
    folder = Path(root) / version
    if not folder.is_dir() or folder.is_symlink():
        raise ArtifactMissing(f"adapter version folder {folder} does not exist")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactMissing(f"{manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files: dict[str, str] = dict(manifest["files"])
        recorded = str(manifest["checksum"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactCorrupt(f"{manifest_path} is not a valid manifest: {exc}") from exc

    for name in _REQUIRED:
        if name not in files:
            raise ArtifactCorrupt(f"{manifest_path} does not list {name}")
    for entry in sorted(os.listdir(folder)):
        if entry != MANIFEST and entry not in files:
            raise ArtifactCorrupt(f"{folder / entry} is not part of the artifact (not in its manifest)")
    if set(files) - set(_REQUIRED):
        raise ArtifactCorrupt(f"{manifest_path} lists unexpected files {sorted(set(files) - set(_REQUIRED))}")

    data: dict[str, bytes] = {}
    for name, digest in files.items():
        path = folder / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ArtifactCorrupt(f"{path} is not a regular file")
        if not path.exists():
            raise ArtifactMissing(f"{path} is missing")
        data[name] = path.read_bytes()
        if _sha256(data[name]) != digest:
            raise ArtifactCorrupt(f"{path} fails its sha256 check")
    checksum = _overall(files)
    if checksum != recorded:
        raise ArtifactCorrupt(f"{manifest_path}: overall checksum does not match its entries")
    if expected_checksum is not None and checksum != expected_checksum:
        raise ArtifactCorrupt(f"{folder}: checksum {checksum[:12]} is not the recorded {expected_checksum[:12]}")
    try:
        state = load_safetensors(data[WEIGHTS])
        peft_config = json.loads(data[CONFIG])
        meta = json.loads(data[META])
    except Exception as exc:  # malformed content that still matches its manifest
        raise ArtifactCorrupt(f"{folder}: cannot parse artifact files: {exc}") from exc
    return LoadedAdapter(state=state, peft_config=peft_config, meta=meta, checksum=checksum)


def sweep_temp(root: Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove `.tmp-*` folders left by crashed writes; returns what was removed.

    Pass `min_age_s > 0` when another process may be writing a version right now.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    now = time.time()
    for path in root.iterdir():
        stale = path.name.startswith(_TMP_PREFIX) and path.is_dir() and not path.is_symlink()
        if stale and now - path.stat().st_mtime >= min_age_s:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def versions_of_run(root: Path, run_id: int) -> list[str]:
    """The version folders whose meta.json names training run `run_id` (the run that wrote them)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if not VERSION_RE.match(path.name) or not path.is_dir() or path.is_symlink():
            continue
        try:
            meta = json.loads((path / META).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("run_id") == run_id:
            found.append(path.name)
    return found


def remove_version(root: Path, version: str) -> None:
    """Delete a version folder that no registry row names. It is renamed to a `.tmp-` folder first, so a
    crash part-way leaves what `sweep_temp` removes, never a version with files missing."""
    validate_version_name(version)
    doomed = Path(root) / f"{_TMP_PREFIX}{version}-removed-{uuid.uuid4().hex}"
    os.rename(Path(root) / version, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
