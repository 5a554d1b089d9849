"""Training-child entry points for the fault tests (spawn pickles them by name; the child imports this)."""

from __future__ import annotations

import resource
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent

from daemon.settings import Settings

FSIZE_LIMIT = 64 * 1024  # bytes: less than one adapter's weights
IMPATIENT_S = 1.0  # seconds the `impatient` child retries its registry write


def disk_full(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """A real training cycle in a child that cannot write a file past FSIZE_LIMIT bytes (RLIMIT_FSIZE): the
    artifact write fails with EFBIG as it would with ENOSPC on a full disk (Python ignores SIGXFSZ)."""
    from daemon.training import cycle

    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
    cycle.child_main(settings, run_id, trigger, stop, conn)


def impatient(settings: Settings, run_id: int, trigger: str, stop: MpEvent, conn: Connection) -> None:
    """A real training cycle in a child that waits only IMPATIENT_S for an unreachable database when it
    records its candidate (instead of `cycle.REGISTRY_PATIENCE_S`): a cut outlasts it in a short test."""
    from daemon.training import cycle

    cycle.REGISTRY_PATIENCE_S = IMPATIENT_S
    cycle.child_main(settings, run_id, trigger, stop, conn)
