"""Two `ranktune ingest` members in one group: the second joins mid-stream, the first is SIGKILLed and
comes back. Nothing is lost or stored twice, and no partition stays stuck (kafka-python #3131): at the
end every partition's committed offset is its end."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import pytest

from daemon.tools.broker import EmbeddedBroker
from tests.fixtures.ingest import IngestCase, simulate, valid_ids, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.broker, pytest.mark.postgres]


@pytest.mark.timeout(240)
def test_member_joins_mid_stream_and_a_killed_member_comes_back_without_loss_or_stuck_partitions(
    broker: EmbeddedBroker, pg_url: str, ingest_case: Callable[..., IngestCase],
) -> None:
    case = ingest_case(broker.bootstrap, pg_url)
    # three phases of one stream, so that the join and the kill fall mid-stream whatever the machine's speed
    phases = [simulate(3000, seed=71 + k) for k in range(3)]
    expected = set().union(*(valid_ids(p) for p in phases))
    case.create_topics()
    a = case.start()
    a.wait_assigned()
    case.produce(phases[0])
    wait_until(lambda: case.count() >= 1000, 60, "part of the first phase stored")
    b = case.start()  # joins mid-stream: the group rebalances
    producer = threading.Thread(target=case.produce, args=(phases[1],), kwargs={"events_per_s": 1000}, daemon=True)
    producer.start()
    wait_until(lambda: "partitions assigned" in b.log(), 60, "the second member to get partitions")

    wait_until(lambda: case.count() >= 4000, 60, "part of the second phase stored")
    a.kill()  # SIGKILL mid-stream: its partitions go to b once its session expires
    at_kill = case.count()
    a_again = case.start()
    producer.join(timeout=90)
    wait_until(lambda: "partitions assigned" in a_again.log(), 60, "the restarted member back in the group")
    case.produce(phases[2])
    wait_until(lambda: case.count() >= len(expected), 120, "every valid event stored")
    assert at_kill < len(expected)

    for p in (b, a_again):
        p.signal(signal.SIGTERM)
    assert [p.wait(timeout=30) for p in (b, a_again)] == [0, 0], b.log()[-2000:] + a_again.log()[-2000:]
    rows = case.query("select event_id, count(*) from feedback_events group by event_id")
    assert {r[0] for r in rows} == expected and all(r[1] == 1 for r in rows)
    # no partition stuck: each one's commit reached its end (each has records: the stream is keyed)
    ends = case.next_offsets()
    assert len(ends) == 6
    assert case.committed() == ends
