"""Fault-injection fixtures, package scope (one set for all of tests/faults): a tansu broker and a
PostgreSQL database that clients reach only through TCP proxies (tansu advertises its proxy's address,
so reconnects after metadata go through it too), and two `ranktune serve` replicas as real processes.
For the training faults, per test: a fresh PostgreSQL database stocked with a shop's traffic (`stocked`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from daemon.settings import Settings
from daemon.tools.broker import EmbeddedBroker
from daemon.tools.simulate import SimRecord
from storage.db import make_engine, upgrade
from tests.faults.serve import Replica, start_replicas, stop_replicas
from tests.fixtures.db import PG_SERVER_URL, _new_pg_database, require_pg
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.training import store_records

# training settings small enough for a few CPU trainings per test (with `training_settings`)
SMALL = {"train_max_groups": 40, "train_epochs": 1, "train_max_items_per_group": 6, "model_max_seq_len": 32,
         "gate_bootstrap_samples": 100, "train_random_negatives": 0}


@dataclass
class ProxiedBroker:
    broker: EmbeddedBroker
    proxy: TcpProxy

    @property
    def bootstrap(self) -> str:
        return self.proxy.address


@dataclass
class ProxiedPostgres:
    direct_url: str  # for the test's own read-backs (never cut)
    proxy: TcpProxy
    engine: Engine  # direct

    @property
    def url(self) -> str:
        """The database through the proxy (what the processes under test get)."""
        return self.direct_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{self.proxy.port}/")


def start_proxied_broker(log: Path) -> ProxiedBroker:
    broker = EmbeddedBroker(log_file=log)
    proxy = TcpProxy(broker.host, broker.port).start()
    broker.advertised = proxy.address
    broker.start()
    return ProxiedBroker(broker, proxy)


@pytest.fixture(scope="package")
def proxied_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedBroker]:
    pb = start_proxied_broker(tmp_path_factory.mktemp("tansu-proxied") / "tansu.log")
    try:
        yield pb
    finally:
        pb.proxy.close()
        pb.broker.stop()


@pytest.fixture(scope="package")
def proxied_pg() -> Iterator[ProxiedPostgres]:
    """A fresh PostgreSQL database at the current schema, and a proxy in front of it."""
    require_pg()
    assert "@127.0.0.1:5432/" in PG_SERVER_URL, "the proxy tests need the local PostgreSQL"
    url, drop = _new_pg_database()
    engine = make_engine(url)
    upgrade(engine)
    proxy = TcpProxy("127.0.0.1", 5432).start()
    try:
        yield ProxiedPostgres(url, proxy, engine)
    finally:
        proxy.close()
        engine.dispose()
        drop()


@pytest.fixture(scope="package")
def stack_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="package")
def replicas(proxied_broker: ProxiedBroker, proxied_pg: ProxiedPostgres, stack_artifacts: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    tmp = tmp_path_factory.mktemp("replicas")
    reps = start_replicas(2, tmp, database_url=proxied_pg.url, bootstrap=proxied_broker.bootstrap,
                          artifacts_dir=stack_artifacts)
    try:
        yield reps
    finally:
        stop_replicas(reps)


@pytest.fixture
def stocked(pg_url: str, shop_traffic: list[SimRecord]) -> Iterator[Engine]:
    """The `pg_url` database (direct) with the shop's traffic stored through the ingest write path."""
    eng = make_engine(pg_url)
    assert store_records(eng, Settings.load(None, storage_database_url=pg_url), shop_traffic) > 3000
    yield eng
    eng.dispose()
