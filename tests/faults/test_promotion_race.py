"""8 threads promote and roll back at random through the HTTP API of 2 `ranktune serve` replicas while
automatic promotions run: exactly one champion afterwards, served by every replica within the reconcile
interval, and one audit row for each action that took effect, chained from the champion before."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from adapters.gate import GateDecision
from daemon.serving.control import ControlPublisher
from daemon.settings import Settings
from daemon.tools.synthetic_adapters import make_version
from daemon.training.messages import CycleOutcome, GateVerdict
from daemon.training.promotion import auto_promote
from storage import registry
from storage.db import session_scope
from tests.faults.conftest import ProxiedBroker, ProxiedPostgres
from tests.faults.serve import AUTH, RECONCILE_S, Replica
from tests.fixtures.ingest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.broker, pytest.mark.postgres,
              pytest.mark.slow]

N_THREADS, N_ACTIONS, N_AUTO = 8, 6, 4
ACTIONS = ("promote", "rollback", "auto_promote")


def _champion(engine: Any) -> str:
    with session_scope(engine) as s:
        return registry.get_alias(session=s, name=registry.CHAMPION) or registry.BASE


def _operator(k: int, urls: list[str], versions: list[str], results: list[tuple[str, int, dict[str, Any]]]) -> None:
    rng = random.Random(1400 + k)
    with httpx.Client(timeout=60, headers=AUTH) as client:
        for _ in range(N_ACTIONS):
            url = rng.choice(urls)
            body = {"actor": f"thread-{k}", "reason": "race"}
            if rng.random() < 0.65:
                r = client.post(f"{url}/v1/adapters/{rng.choice(versions)}/promote", json=body)
                results.append(("promote", r.status_code, r.json()))
            else:
                r = client.post(f"{url}/v1/adapters/rollback", json=body)
                results.append(("rollback", r.status_code, r.json()))


def _auto(engine: Any, settings: Settings, versions: list[str], done: list[str]) -> None:
    rng = random.Random(1499)
    publisher = ControlPublisher(settings)
    try:
        for run_id in range(N_AUTO):
            candidate = rng.choice(versions[1:])
            verdict = GateVerdict(compared_with=_champion(engine),  # stale by the time it lands, sometimes
                                  decision=GateDecision(passed=True, reasons=["race test"], ndcg_gain=0.01))
            outcome = CycleOutcome(run_id=run_id, trigger="test", status="succeeded", candidate_version=candidate,
                                   gate=verdict)
            try:
                if auto_promote(outcome, engine=engine, auto=True, publish=publisher.publish):
                    done.append(candidate)
            except Exception as exc:  # e.g. already the champion: an InvalidTransition, not a race
                done.append(f"refused: {type(exc).__name__}")
    finally:
        publisher.close()


@pytest.mark.timeout(300)
def test_racing_promotions_leave_one_champion_served_everywhere_with_an_audit_row_each(
    proxied_broker: ProxiedBroker, proxied_pg: ProxiedPostgres, replicas: list[Replica],
    stack_artifacts: Path, reference_ranker: Any,
) -> None:
    engine = proxied_pg.engine
    versions = [registry.BASE] + [make_version(reference_ranker, engine=engine, artifacts_dir=stack_artifacts,
                                               seed=700 + i) for i in range(4)]
    with engine.connect() as c:
        first_audit = int(c.execute(text("select coalesce(max(id), 0) from audit_log")).scalar_one())
    start = _champion(engine)
    settings = Settings.load(kafka_bootstrap=proxied_broker.bootstrap, storage_database_url=proxied_pg.direct_url)

    results: list[tuple[str, int, dict[str, Any]]] = []
    autos: list[str] = []
    threads = [threading.Thread(target=_operator, args=(k, [r.url for r in replicas], versions, results))
               for k in range(N_THREADS)]
    threads.append(threading.Thread(target=_auto, args=(engine, settings, versions, autos)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(results) == N_THREADS * N_ACTIONS
    assert {code for _, code, _ in results} <= {200, 409}, [r for r in results if r[1] not in (200, 409)]
    assert all(b.get("error", {}).get("message") for _, code, b in results if code == 409)

    champion = _champion(engine)
    with engine.connect() as c:
        rows = c.execute(text("select version from adapter_versions where status = 'champion'")).all()
        audit = c.execute(text("select id, action, from_version, to_version from audit_log where id > :a "
                               "and action in ('promote', 'rollback', 'auto_promote') order by id"),
                          {"a": first_audit}).all()
    # exactly one champion, and the alias names it
    assert [r[0] for r in rows] == ([] if champion == registry.BASE else [champion])
    # an audit row for each action that took effect, and none for any other
    took = [b for _, code, b in results if code == 200]
    auto_ok = [v for v in autos if not v.startswith("refused")]
    assert len(audit) == len(took) + len(auto_ok)
    by_id = {a[0]: a for a in audit}
    for b in took:
        assert by_id[b["audit_id"]][1:] == (b["action"], b["from_version"], b["to_version"])
    # serialized: each action started from the champion the one before it left
    chain = start
    for _, _, from_v, to_v in audit:
        assert (from_v or registry.BASE) == chain
        chain = to_v or registry.BASE
    assert chain == champion
    # every replica serves it within the reconcile interval (control notices usually make it faster)
    wait_until(lambda: all(r.served() == champion for r in replicas), RECONCILE_S + 2, f"replicas on {champion}")
    print(f"\n{len(took)} API actions took effect, {len(results) - len(took)} refused (409), "
          f"auto: {autos}; champion {champion}")
