"""The command line fails clearly: one line per error, printed once, exit 2 for usage and configuration, 1 for
failures, JSON under --json; read-only commands never create a database; listing never loads the model stack.

Each case of issue 15's list, tried as a new user would: most run `daemon.cli.main` in-process, those about
imports and tracebacks run `python -m daemon.cli` in a subprocess.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from storage.db import make_engine, upgrade

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """`cli(*argv, **env)`: run `ranktune` in-process on a database under tmp_path (not created)."""
    for key in [k for k in os.environ if k.startswith("RANKTUNE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RANKTUNE_STORAGE_DATABASE_URL", f"sqlite:///{tmp_path / 'rt.db'}")

    def run(*argv: str, **env: str) -> Result:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def _subprocess(*argv: str, env: dict[str, str] | None = None, code: str | None = None) -> Result:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANKTUNE_")}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "daemon.cli", *argv]
    p = subprocess.run(cmd, cwd=REPO, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)
    return Result(p.returncode, p.stdout, p.stderr)


def _db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rt.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def test_roles_in_the_readme_format_reach_the_application(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, ...]] = []

    class Recorder:  # stands in for the daemon: what matters here is what the CLI hands it
        def __init__(self, settings: Any, roles: Any, **kw: Any) -> None:
            started.append(tuple(roles))

        def run(self) -> int:
            return 0

    monkeypatch.setattr("daemon.app.Application", Recorder)
    assert cli("run", RANKTUNE_ROLES="ingest,scheduler,serve").code == 0
    assert cli("run", RANKTUNE_ROLES="ingest, serve").code == 0
    assert started == [("ingest", "scheduler", "serve"), ("ingest", "serve")]
    bad = cli("run", RANKTUNE_ROLES="ingest,trainer")
    assert bad.code == 2 and len(bad.err_lines) == 1
    assert bad.err.startswith("ranktune: invalid settings: RANKTUNE_ROLES")


def test_log_level_is_case_insensitive_and_a_bad_one_is_one_line(cli: Any, tmp_path: Path) -> None:
    _db(tmp_path)
    ok = cli("--log-level", "debug", "status", "--json")
    assert ok.code == 0 and json.loads(ok.out)["champion"] == "base"
    bad = cli("--log-level", "loud", "status")
    assert bad.code == 2 and len(bad.err_lines) == 1 and "--log-level" in bad.err and "DEBUG" in bad.err
    env = cli("status", RANKTUNE_LOG_LEVEL="Warning")
    assert env.code == 0


def test_a_malformed_toml_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    toml = tmp_path / "ranktune.toml"
    toml.write_text("[kafka\nbootstrap = \n")
    r = _subprocess("--config", str(toml), "status")
    assert r.code == 2 and len(r.err_lines) == 1 and "Traceback" not in r.err and str(toml) in r.err
    r = _subprocess("--config", str(tmp_path / "missing.toml"), "status")
    assert r.code == 2 and r.err_lines == [f"ranktune: config file {tmp_path / 'missing.toml'} does not exist"]


def test_errors_name_the_variable_the_user_set(cli: Any) -> None:
    r = cli("status", RANKTUNE_API_PORT="eighty")
    assert r.code == 2 and len(r.err_lines) == 1 and "RANKTUNE_API_PORT" in r.err and "api.port" not in r.err
    r = cli("status", "--json", RANKTUNE_KAFKA_SESSION_TIMEOUT_MS="10")
    assert r.code == 2 and json.loads(r.err)["error"]["code"] == "config_error"
    assert "RANKTUNE_KAFKA_SESSION_TIMEOUT_MS" in json.loads(r.err)["error"]["message"]


def test_a_misspelled_variable_warns_with_the_closest_one(cli: Any, tmp_path: Path) -> None:
    _db(tmp_path)
    r = cli("status", RANKTUNE_KAFKA_BOOTSRAP="broker:9092")
    assert r.code == 0 and r.err_lines == [
        "ranktune: warning: RANKTUNE_KAFKA_BOOTSRAP is not a ranktune setting and is ignored; "
        "did you mean RANKTUNE_KAFKA_BOOTSTRAP?"]
    r = cli("status", "--json", RANKTUNE_KAFKA_BOOTSRAP="broker:9092")
    assert json.loads(r.err)["warning"].startswith("RANKTUNE_KAFKA_BOOTSRAP is not a ranktune setting")


@pytest.mark.parametrize("argv", [("status",), ("status", "--json"), ("adapters", "list"),
                                  ("adapters", "show", "v0001"), ("adapters", "promote", "v0001", "--no-publish"),
                                  ("db", "current")])
def test_read_only_commands_never_create_the_database(cli: Any, tmp_path: Path, argv: tuple[str, ...]) -> None:
    r = cli(*argv)
    assert r.code == 1 and len(r.err_lines) == 1 and "no database at" in r.err and "db upgrade" in r.err
    assert not (tmp_path / "rt.db").exists()


def test_db_current_fails_on_an_outdated_schema(cli: Any, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "rt.db") as conn:  # a database from before ranktune's schema
        conn.execute("create table unrelated (id integer)")
    r = cli("db", "current")
    assert r.code == 1 and "OUTDATED" in r.out
    assert cli("status").code == 1  # refused, not migrated: the schema is still missing
    with sqlite3.connect(tmp_path / "rt.db") as conn:
        assert [t for (t,) in conn.execute("select name from sqlite_master where type='table'")] == ["unrelated"]
    assert cli("db", "upgrade").code == 0
    r = cli("db", "current")
    assert r.code == 0 and "up to date" in r.out


def test_adapters_list_does_not_import_the_model_stack(tmp_path: Path) -> None:
    url = _db(tmp_path)
    code = ("import sys; from daemon.cli import main; rc = main(['adapters', 'list']); "
            "print(rc, sorted({'torch', 'transformers', 'bitsandbytes', 'peft'} & set(sys.modules)))")
    r = _subprocess(code=code, env={"RANKTUNE_STORAGE_DATABASE_URL": url})
    assert r.out.splitlines()[-1] == "0 []" and r.err == ""
    r = _subprocess("adapters", "show", "v0001", env={"RANKTUNE_STORAGE_DATABASE_URL": url})
    assert r.code == 1 and r.err_lines == ["ranktune: no adapter version 'v0001'"]


def test_train_without_once_says_what_it_needs(cli: Any) -> None:
    r = cli("train")
    assert r.code == 2 and len(r.err_lines) == 1 and "--once" in r.err and "ranktune run" in r.err
    r = cli("train", "--json")
    assert r.code == 2 and json.loads(r.err)["error"]["code"] == "usage_error"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"ranktune {version()}"
    assert version()[0].isdigit()


def test_errors_under_json_are_json_and_printed_once(cli: Any, tmp_path: Path) -> None:
    _db(tmp_path)
    r = cli("adapters", "show", "v0042", "--json")
    assert r.code == 1 and r.out == "" and len(r.err_lines) == 1
    assert json.loads(r.err) == {"error": {"code": "version_not_found", "message": "no adapter version 'v0042'"}}
    r = cli("adapters", "list", "--json", "--colour")
    assert r.code == 2 and json.loads(r.err)["error"]["code"] == "usage_error" and "--colour" in r.err
    r = cli("adapters", "rollback", "--no-publish")
    assert r.code == 1 and r.err_lines == ["ranktune: there is no previous champion to roll back to"]


def test_usage_errors_are_one_line_with_exit_2(cli: Any) -> None:
    for argv in (("frobnicate",), (), ("adapters",), ("simulate", "--events", "-3"), ("status", "--runs", "x"),
                 ("status", "--runs", "-1"), ("status", "--runs", "99999999999999999999999"),
                 ("--log-level", "bogus", "status"),
                 # refused before the broker, the model or any role starts
                 ("demo", "--rate", "0", "--no-live"), ("demo", "--duration", "0", "--no-live"),
                 ("demo", "--drift-at", "2", "--no-live")):
        r = cli(*argv)
        assert r.code == 2 and len(r.err_lines) == 1 and r.err.startswith("ranktune: "), (argv, r.err)
        assert "ranktune: ranktune" not in r.err, r.err  # the prefix once
    r = _subprocess("bench", "nonsense")
    assert r.code == 2 and len(r.err_lines) == 1 and "Traceback" not in r.err
