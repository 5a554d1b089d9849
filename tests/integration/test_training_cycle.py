"""Training cycles end to end from stored events: candidate, gate, registry, artifacts, failures.

Storage is touched, so these run on SQLite and PostgreSQL (the `db_url` parameter).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from adapters import artifacts
from adapters.gate import GateDecision
from adapters.ranker import Ranker
from daemon import cli
from daemon.settings import Settings, env_vars
from daemon.tools.synthetic_adapters import make_version
from daemon.training.messages import CycleOutcome, GateVerdict
from daemon.training.promotion import auto_promote
from daemon.training.trainer_process import TrainerProcess
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from tests.fixtures.training import store_records
from tests.integration import crash_targets

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def stocked(db_url: str, shop_traffic: list) -> Engine:
    eng = make_engine(db_url)
    upgrade(eng)
    s = Settings.load(None, storage_database_url=db_url)
    assert store_records(eng, s, shop_traffic) > 3000
    return eng


def _set_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    for name, value in env_vars(settings).items():
        monkeypatch.setenv(name, value)


def test_train_once_registers_a_gated_candidate(stocked: Engine, db_url: str,
                                                training_settings: Callable[..., Settings],
                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    # a valid gated candidate is what this checks, not a good one: a short run keeps CI fast. Early stopping
    # reads a selection slice here (the default reads the holdout, as every other training test does).
    settings = training_settings(db_url, train_max_groups=60, train_epochs=1, train_max_items_per_group=6,
                                 train_selection_fraction=0.15)
    _set_env(monkeypatch, settings)
    assert cli.main(["train", "--once", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["status"] == "succeeded" and doc["trigger"] == "manual"
    assert doc["candidate_version"] == "v0001" and doc["device"] == "cpu" and doc["quantization"] == "nf4"
    cand, champ = doc["metrics"]["candidate"], doc["metrics"]["compared_with"]
    assert champ["version"] == "base"
    assert doc["training"]["selection"]["on"] == "selection" and doc["training"]["selection"]["n_groups"] > 0
    assert 0.0 <= champ["holdout"]["ndcg10"] <= 1.0 and 0.0 <= cand["holdout"]["ndcg10"] <= 1.0
    gate = doc["gate"]
    assert gate["compared_with"] == "base" and isinstance(gate["passed"], bool) and gate["reasons"]
    assert gate["ndcg_gain"] == pytest.approx(cand["holdout"]["ndcg10"] - champ["holdout"]["ndcg10"], abs=1e-6)
    # the off-page check ran: both sides scored the holdout pages with items of other pages added
    assert gate["offpage_delta"] is not None and -1.0 <= gate["offpage_delta"] <= 1.0
    assert any("off-page items take" in r for r in gate["reasons"]), gate["reasons"]

    with session_scope(stocked) as s:
        row = registry.get_version(session=s, version="v0001")
        run = registry.recent_runs(session=s, limit=1)[0]
        champion = registry.champion(session=s)
    loaded = artifacts.load_adapter(settings.storage.artifacts_dir, "v0001", expected_checksum=row.checksum)
    assert loaded.state and row.gate == gate and row.quantization == "nf4"
    assert run.status == "succeeded" and run.candidate_version == "v0001" and run.n_train and run.n_holdout
    assert run.best_step is not None and run.best_step <= run.steps
    # the gate's verdict is what happened: promoted exactly when it passed
    assert (champion == "v0001") == gate["passed"] == (doc["promoted"] == "v0001")
    assert (row.status == "champion") == gate["passed"]


def test_a_worse_candidate_is_refused_and_never_served(stocked: Engine, db_url: str,
                                                       training_settings: Callable[..., Settings]):
    # A fresh adapter scores exactly like the base, so a worse one is made on purpose: noise on its LoRA B
    # and head and no time to train, so the kept checkpoint is that noise, below the zero-shot base.
    settings = training_settings(db_url, train_max_seconds=0.01, train_max_groups=120)
    outcome = TrainerProcess(settings, stocked, target=crash_targets.noisy_head).run("manual")
    assert outcome.status == "succeeded" and outcome.gate is not None
    assert outcome.gate.passed is False
    assert outcome.gate.decision.ndcg_gain < 0
    assert any("gain" in r.lower() or "ndcg" in r.lower() for r in outcome.gate.decision.reasons)
    assert auto_promote(outcome, engine=stocked, auto=True) is None
    with session_scope(stocked) as s:
        assert registry.champion(session=s) == "base"
        assert registry.get_version(session=s, version=outcome.candidate_version).status == "candidate"
        assert not [a for a in registry.audit_log(session=s) if a.action in ("promote", "auto_promote")]


def test_promotion_is_skipped_when_the_champion_moved_during_training(
        db_url: str, training_settings: Callable[..., Settings], load_ranker: Callable[..., Ranker]):
    # What a training run leaves (a registered candidate and its gate verdict), without the training:
    # the rule under test is auto_promote's, which never looks at how the candidate was made.
    engine = make_engine(db_url)
    upgrade(engine)
    settings = training_settings(db_url)
    version = make_version(load_ranker("nf4"), engine=engine, artifacts_dir=settings.storage.artifacts_dir, seed=3)
    # a passing verdict against a champion that is no longer the champion (an operator moved it meanwhile)
    verdict = GateVerdict(compared_with="v0999", decision=GateDecision(passed=True, ndcg_gain=0.05))
    outcome = CycleOutcome(run_id=1, trigger="manual", status="succeeded", candidate_version=version, gate=verdict)
    assert auto_promote(outcome, engine=engine, auto=True) is None
    with session_scope(engine) as s:
        assert registry.champion(session=s) == "base"
        assert registry.get_version(session=s, version=version).status == "candidate"
        last = registry.audit_log(session=s, limit=1)[0]
        assert last.action == "skip_promote" and last.to_version == version and "v0999" in (last.reason or "")
    engine.dispose()


@pytest.mark.parametrize("target", ["die_mid_write", "raise_inside"])
def test_a_crash_in_training_leaves_no_version_and_the_parent_survives(
        target: str, stocked: Engine, db_url: str, training_settings: Callable[..., Settings]):
    settings = training_settings(db_url)
    settings.storage.artifacts_dir.mkdir(parents=True, exist_ok=True)
    trainer = TrainerProcess(settings, stocked, target=getattr(crash_targets, target))
    outcome = trainer.run("manual")
    assert outcome.status == "failed" and outcome.candidate_version is None
    expected = "exit code 137" if target == "die_mid_write" else "out of memory"
    assert expected in (outcome.error or "")
    with session_scope(stocked) as s:
        assert registry.list_versions(session=s) == []
        run = registry.recent_runs(session=s, limit=1)[0]
        assert run.status == "failed" and expected in (run.error or "")
        assert registry.champion(session=s) == "base"
    assert not list(settings.storage.artifacts_dir.glob(".tmp-*")), "a half-written artifact was left behind"
    if target == "die_mid_write":  # a killed child is the harsher case (and its target starts fast)
        again = trainer.run("manual")  # the parent is fine and can run the next cycle
        assert again.status == "failed" and again.run_id == outcome.run_id + 1
