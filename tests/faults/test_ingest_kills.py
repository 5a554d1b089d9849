"""`ranktune ingest` SIGKILLed at 10 seeded random points of a 20k-event stream and restarted each time:
every valid event is stored exactly once and, at the end, everything consumed is committed."""

from __future__ import annotations

import random
import signal
from collections.abc import Callable

import pytest

from daemon.tools.broker import EmbeddedBroker
from tests.fixtures.ingest import IngestCase, simulate, valid_ids, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.broker, pytest.mark.postgres]

N_EVENTS = 20_000
N_KILLS = 10
SEED = 1414


@pytest.mark.timeout(300)
def test_sigkill_at_ten_random_points_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, pg_url: str, ingest_case: Callable[..., IngestCase],
) -> None:
    # small batches: rows appear a few hundred at a time, so the kill lands near its point and not,
    # several 2000-record batches later, after the stream ended (the pipelined loop commits them fast)
    case = ingest_case(broker.bootstrap, pg_url, kafka_poll_max_records=250)
    records = simulate(N_EVENTS, seed=SEED)
    expected = valid_ids(records)
    assert len(expected) > N_EVENTS // 2
    case.create_topics()
    case.produce(records)
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(200, len(expected) - 200), N_KILLS))

    kills_mid_stream = 0
    for point in points:
        proc = case.start()
        wait_until(lambda p=point, pr=proc: case.count() >= p or pr.proc.poll() is not None,  # type: ignore[misc]
                   120, f"{point} events stored", interval=0.05)
        assert proc.proc.poll() is None, proc.log()[-3000:]
        proc.kill()  # SIGKILL: no final commit, no clean leave
        kills_mid_stream += case.count() < len(expected)
    assert kills_mid_stream == N_KILLS, "a kill came after the stream ended: fewer crash points were tested"

    last = case.start()
    wait_until(lambda: case.count() >= len(expected), 120, "every valid event stored after the last restart")
    last.signal(signal.SIGTERM)
    assert last.wait(timeout=30) == 0, last.log()[-3000:]
    rows = case.query("select event_id, count(*) from feedback_events group by event_id")
    assert {r[0] for r in rows} == expected  # 0 lost
    assert all(r[1] == 1 for r in rows) and case.count() == len(expected)  # 0 duplicates
    assert case.committed() == case.next_offsets()  # every record consumed is committed
