"""One training per database: a lease row that its holder renews while it trains.

Two trainings on one registry (a scheduler and an operator's `train --once`, or two schedulers during a
rolling deploy) would pick the same version name, and one of them would be wasted. `exclusive_training`
takes the `training_leases` row for `ttl_s` seconds and a thread renews it every third of that (every
`RETRY_S` while renewals fail); the block ends by deleting it. A holder that dies, or loses the database for
longer than the lease, lets it expire, and another process may then take it. The holder learns that at its
next renewal, once it reaches the database again, and its `on_lost` callback runs (the trainer stops its
training then: no version kept). Until then the two may train side by side; their version names may
collide, and one of the two runs then fails cleanly. A lease that merely expired, with nobody taking it,
is renewed as if nothing happened. A lease, not a session lock: PostgreSQL keeps an advisory lock as long
as the server believes the session alive, and a half-open link after a partition can keep it for hours
(TCP keepalive), skipping every training meanwhile.
"""


from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import session_scope, write_scope
from storage.models import TrainingLease, as_utc, utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "train"
DEFAULT_TTL_S = 120.0
RETRY_S = 5.0  # the renewal retry interval while the database does not answer


def try_acquire(engine: Engine, holder: str, ttl_s: float) -> bool:
    """Take (or extend) the lease for `holder` unless another holder's lease is still running."""
    now = utcnow()
    try:
        with write_scope(engine) as s:  # BEGIN IMMEDIATE on SQLite; the row is locked on PostgreSQL
            row = s.execute(select(TrainingLease).where(col(TrainingLease.name) == LEASE_NAME)
                            .with_for_update()).scalars().first()
            if row is not None and row.holder != holder and as_utc(row.expires_at) > now:
                return False
            if row is None:
                s.add(TrainingLease(name=LEASE_NAME, holder=holder, expires_at=now + timedelta(seconds=ttl_s)))
            else:
                row.holder, row.expires_at = holder, now + timedelta(seconds=ttl_s)
    except IntegrityError:  # another process inserted the first row at the same moment
        return False
    return True


def renew(engine: Engine, holder: str, ttl_s: float) -> bool:
    """Push `holder`'s lease `ttl_s` into the future; False when it is no longer `holder`'s."""
    with session_scope(engine) as s:
        done = s.execute(update(TrainingLease)
                         .where(col(TrainingLease.name) == LEASE_NAME, col(TrainingLease.holder) == holder)
                         .values(expires_at=utcnow() + timedelta(seconds=ttl_s)))
        return bool(getattr(done, "rowcount", 0) == 1)


def release(engine: Engine, holder: str) -> None:
    with session_scope(engine) as s:
        s.execute(delete(TrainingLease).where(col(TrainingLease.name) == LEASE_NAME,
                                              col(TrainingLease.holder) == holder))


def owner_tag() -> str:
    """`host:pid` of this process: what a lease holder (and a training run row) records as its owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def exclusive_training(engine: Engine, ttl_s: float = DEFAULT_TTL_S, *,
                       on_lost: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold the database's training lease while the block runs; yields False (nothing held) when another
    process holds it. `on_lost` runs (once, in the renewing thread) when a renewal finds that another
    process has taken the lease. Raises what the database raises when it cannot be reached at the start."""
    holder = f"{owner_tag()}:{uuid.uuid4().hex[:8]}"
    if not try_acquire(engine, holder, ttl_s):
        yield False
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_keep, args=(engine, holder, ttl_s, stop, on_lost), name="training-lease",
                               daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join(1.0)
        try:
            release(engine, holder)
        except Exception as exc:
            log.warning("cannot release the training lease (%s); it expires within %.0f s", exc, ttl_s)


def _keep(engine: Engine, holder: str, ttl_s: float, stop: threading.Event,
          on_lost: Callable[[], None] | None) -> None:
    """Renew `holder`'s lease every `ttl_s / 3` until `stop`; retry every `RETRY_S` while the database does
    not answer (the lease runs out unless it comes back in time); call `on_lost` and end when it is taken."""
    wait_s = ttl_s / 3
    while not stop.wait(wait_s):
        try:
            held = renew(engine, holder, ttl_s)
        except Exception as exc:
            log.warning("cannot renew the training lease: %s", exc)
            wait_s = min(RETRY_S, ttl_s / 3)
            continue
        wait_s = ttl_s / 3
        if not held:
            log.error("the training lease expired while this process could not renew it, and another process "
                      "took it: this training stops")
            if on_lost is not None:
                on_lost()
            return
