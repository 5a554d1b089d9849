"""Thread-safe ingestion counters. The ingest loop writes them; the HTTP API reads `snapshot()`.

Per delivered record exactly one of `stored`, `duplicates`, `dead_lettered` grows, so after a batch
`consumed == stored + duplicates + dead_lettered` (a record delivered twice, after a crash or a
rebalance, is consumed twice and counted as a duplicate the second time).

`lag` is in offsets, summed over the assigned partitions (high-water mark minus the next offset to
read). On brokers that number batches rather than records (tansu advances one offset per produced
batch) it is a lower bound of the records behind, not a count of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class IngestStats:
    consumed: int = 0
    stored: int = 0  # new feedback rows + catalog rows written
    duplicates: int = 0  # feedback already stored + catalog upserts superseded by a newer `ts`
    dead_lettered: int = 0
    deadletter_failed: int = 0  # rejects that could not be published (logged with topic[partition]@offset)
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    db_errors: int = 0
    broker_errors: int = 0
    lag: int = 0
    paused: bool = False  # partitions paused while the database (or dead-letter topic) is down
    last_commit_at: float | None = None  # time.time() of the last successful commit
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # dead_lettered, by reason code
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Add to several counters at once, atomically."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def set(self, **values: Any) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def add_reasons(self, reasons: Iterable[str]) -> None:
        """Count dead letters by reason code (the breakdown of `dead_lettered`)."""
        with self._lock:
            for reason in reasons:
                self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1

    def committed(self) -> None:
        with self._lock:
            self.commits += 1
            self.last_commit_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of all counters."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
            out["dead_letter_reasons"] = dict(self.dead_letter_reasons)
            return out

    def summary(self) -> str:
        s = self.snapshot()
        return (
            f"consumed={s['consumed']} stored={s['stored']} duplicates={s['duplicates']} "
            f"dead_lettered={s['dead_lettered']} batches={s['batches']} lag={s['lag']} "
            f"commits={s['commits']} db_errors={s['db_errors']} paused={s['paused']}"
        )
