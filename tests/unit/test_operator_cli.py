"""Operator actions shared by CLI and API, and `ranktune adapters ...` / `ranktune status` on the database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from daemon.cli import main as cli_main
from daemon.errors import BrokerUnavailable
from daemon.serving.control import ControlMessage
from daemon.training.promotion import promote, rollback
from storage import registry
from storage.db import session_scope


def test_promote_publishes_after_commit_and_survives_a_dead_broker(
    engine: Engine, make_versions: Callable[..., list[str]], artifacts_dir: Path
) -> None:
    v1, v2 = make_versions(engine, 2)
    sent: list[ControlMessage] = []
    r = promote(engine=engine, version=v1, actor="alice", reason="r1", artifacts_dir=artifacts_dir,
                publish=sent.append)
    assert (r.from_version, r.to_version, r.published) == ("base", v1, True)
    assert [(m.action, m.version, m.from_version) for m in sent] == [("promote", v1, "base")]
    assert ControlMessage.from_bytes(sent[0].to_bytes()).version == v1

    def dead(_: ControlMessage) -> None:
        raise BrokerUnavailable("no broker")

    r = promote(engine=engine, version=v2, actor="bob", artifacts_dir=artifacts_dir, publish=dead)
    assert not r.published and "no broker" in (r.publish_error or "")
    r = rollback(engine=engine, actor="carol", artifacts_dir=artifacts_dir, publish=sent.append)
    assert (r.action, r.from_version, r.to_version) == ("rollback", v2, v1)
    with session_scope(engine) as s:
        assert registry.champion(session=s) == v1
        assert [(a.actor, a.action) for a in reversed(registry.audit_log(session=s))] == [
            ("alice", "promote"), ("bob", "promote"), ("carol", "rollback")]


def test_control_message_validation() -> None:
    for raw in (b"not json", b"[]", b'{"action": "delete", "version": "v0001"}',
                b'{"action": "promote", "version": "../etc"}', b'{"action": "promote"}'):
        with pytest.raises(ValueError):
            ControlMessage.from_bytes(raw)
    assert ControlMessage.from_bytes(b'{"action": "rollback", "version": "base", "ts": "x"}').version == "base"


def test_cli_adapters_and_status(
    sqlite_engine: Engine, make_versions: Callable[..., list[str]], artifacts_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    v1, v2 = make_versions(sqlite_engine, 2)
    monkeypatch.setenv("RANKTUNE_STORAGE_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    monkeypatch.setenv("RANKTUNE_STORAGE_ARTIFACTS_DIR", str(artifacts_dir))
    monkeypatch.setenv("USER", "dora")
    monkeypatch.setenv("RANKTUNE_MODEL_QUANTIZATION", "none")  # as the scorers (and the versions' training) run

    def run(*argv: str) -> tuple[int, str]:
        code = cli_main(list(argv))
        return code, capsys.readouterr().out

    code, out = run("adapters", "promote", v1, "--no-publish", "--reason", "first", "--json")
    assert code == 0 and json.loads(out)["to"] == v1
    code, out = run("adapters", "promote", v2, "--no-publish", "--actor", "eve")
    assert code == 0 and f"{v1} -> {v2}" in out
    code, out = run("adapters", "list", "--json")
    listing = json.loads(out)
    assert (listing["champion"], listing["previous"]) == (v2, v1)
    assert [v["status"] for v in listing["versions"]] == ["retired", "champion"]
    code, out = run("adapters", "list")
    assert code == 0 and "champion: v0002" in out
    code, out = run("adapters", "show", v1, "--json")
    assert [h["action"] for h in json.loads(out)["history"]] == ["promote", "promote"]
    code, out = run("adapters", "rollback", "--no-publish", "--json")
    assert code == 0 and json.loads(out)["to"] == v1
    code, out = run("adapters", "rollback", "--no-publish", "--json")  # v1 had been promoted from base
    assert code == 0 and json.loads(out)["to"] == "base"
    assert run("adapters", "rollback", "--no-publish")[0] == 1  # no previous left: refused
    assert run("adapters", "promote", v1, "--no-publish")[0] == 0
    assert run("adapters", "promote", "v12", "--no-publish")[0] == 1  # invalid name
    assert run("adapters", "show", "v0042")[0] == 1
    with session_scope(sqlite_engine) as s:
        assert [a.actor for a in reversed(registry.audit_log(session=s))] == ["dora", "eve", "dora", "dora", "dora"]
    code, out = run("status", "--json")
    status = json.loads(out)
    assert code == 0 and status["champion"] == v1 and status["ingestion"]["feedback_events"] == 0
    assert [c["version"] for c in status["candidates"]] == []
    code, out = run("status")
    assert code == 0 and f"champion: {v1}" in out
    # a version trained on another base than RANKTUNE_MODEL_PATH's is refused, with the reason, and nothing moves
    with session_scope(sqlite_engine) as s:
        registry.get_version(session=s, version=v2).base_model = "another-base@0123456789ab"
    code = cli_main(["adapters", "promote", v2, "--no-publish"])
    err = capsys.readouterr().err
    assert code == 1 and "trained on base another-base@0123456789ab" in err, err
    # ... and one trained on this base quantized otherwise than RANKTUNE_MODEL_QUANTIZATION says
    with session_scope(sqlite_engine) as s:
        row = registry.get_version(session=s, version=v2)
        row.base_model, row.quantization = registry.get_version(session=s, version=v1).base_model, "int8"
    code = cli_main(["adapters", "promote", v2, "--no-publish"])
    err = capsys.readouterr().err
    assert code == 1 and "on the int8-quantized base; this runs it none (RANKTUNE_MODEL_QUANTIZATION)" in err, err
    code, out = run("adapters", "list", "--json")
    assert json.loads(out)["champion"] == v1
