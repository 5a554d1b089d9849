"""Training-child entry points that fail on purpose (spawn pickles them by name; the child imports this module)."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent

from daemon.settings import Settings


def die_mid_write(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """Start writing an artifact, then die the way an out-of-memory kill does: no cleanup, no report."""
    tmp = settings.storage.artifacts_dir / f".tmp-v0001-crash{run_id}"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "adapter_model.safetensors").write_bytes(b"half a file")
    os._exit(137)


def raise_inside(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """An ordinary exception inside training (the child's own handler records it)."""
    from daemon.training import cycle

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    cycle.run_cycle = boom  # type: ignore[assignment]
    cycle.child_main(settings, run_id, trigger, stop, conn)


def noisy_head(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """A real training cycle whose fresh adapters start from random weights instead of the base.

    With no time to train, the kept checkpoint is that noise added to the zero-shot score: a candidate
    measurably worse than the base, produced and gated by the real pipeline.
    """
    from adapters.ranker import Ranker
    from daemon.tools.synthetic_adapters import perturbed
    from daemon.training import cycle

    plain_new_adapter = Ranker.new_adapter

    def new_adapter(self: Ranker, name: str) -> None:
        plain_new_adapter(self, name)
        self.load_state(name, perturbed(self.adapter_state(name), run_id, scale=0.5))

    Ranker.new_adapter = new_adapter  # type: ignore[method-assign]
    cycle.child_main(settings, run_id, trigger, stop, conn)
