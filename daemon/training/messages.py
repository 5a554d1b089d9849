"""Typed messages between the training child and the daemon: progress, and the cycle's outcome.

The child sends each message as JSON over a pipe (`report`); the parent parses it back with pydantic
(`parse`), so a malformed message is an error with a field name, not a `KeyError` later. The gate's
verdict travels inside the outcome as a `GateVerdict` and is stored in the registry as its JSON.
"""

from __future__ import annotations

import contextlib
from multiprocessing.connection import Connection
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from adapters.gate import GateDecision

RunStatus = Literal["running", "succeeded", "failed", "cancelled", "skipped"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateVerdict(_Message):
    """The gate's decision (`adapters.gate.GateDecision`, validated field by field) and the version the
    candidate was compared with."""

    compared_with: str
    decision: GateDecision

    @property
    def passed(self) -> bool:
        return self.decision.passed

    def record(self) -> dict[str, Any]:
        """The flat JSON stored in the registry (`adapter_versions.gate`, `training_runs.gate`)."""
        return {"compared_with": self.compared_with, **self.model_dump(mode="json")["decision"]}


class CycleSummary(_Message):
    """How a succeeded run went (what `ranktune train --once` prints)."""

    device: str
    quantization: str
    artifact_path: str
    metrics: dict[str, Any]
    n_train: int
    n_holdout: int
    best_step: int
    steps: int
    early_stopped: bool
    seconds: float


class CycleOutcome(_Message):
    """The result of one training cycle, as the parent sees it."""

    type: Literal["result"] = "result"
    run_id: int
    trigger: str
    status: RunStatus
    candidate_version: str | None = None
    gate: GateVerdict | None = None
    summary: CycleSummary | None = None
    error: str | None = None


class Progress(_Message):
    """A step or evaluation of the running training (`adapters.training` progress events)."""

    type: Literal["progress"] = "progress"
    event: dict[str, Any]


ChildMessage = CycleOutcome | Progress
_CHILD_MESSAGE: TypeAdapter[ChildMessage] = TypeAdapter(ChildMessage)


def parse(raw: str | bytes) -> ChildMessage:
    """A message from the child (raises pydantic's ValidationError when it is not one)."""
    return _CHILD_MESSAGE.validate_json(raw)


def report(conn: Connection, message: ChildMessage) -> None:
    """Child side: send a message to the parent; a vanished parent is not the child's problem."""
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send_bytes(message.model_dump_json().encode())
