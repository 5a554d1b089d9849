"""`ranktune eval --judgements` and `ranktune simulate --from-judgements` through the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from daemon.cli import main as cli_main
from daemon.tools.sim_output import read_jsonl

# Two queries whose relevant item says exactly what the query says: the zero-shot base ranks them first.
JUDGED = """query\titem_id\ttext\tgrade
red wool scarf\ta1\tRed wool scarf, knitted\t3
red wool scarf\ta2\tBlue plastic garden bucket\t0
red wool scarf\ta3\tStainless steel kitchen knife\t0
waterproof hiking boots\tb1\tWaterproof leather hiking boots\t3
waterproof hiking boots\tb2\tSummer cotton dress\t0
waterproof hiking boots\tb3\tWireless gaming mouse\t1
only one grade here\tc1\tanything\t0
"""


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, artifacts_dir: Path) -> None:
    monkeypatch.setenv("RANKTUNE_STORAGE_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    monkeypatch.setenv("RANKTUNE_STORAGE_ARTIFACTS_DIR", str(artifacts_dir))
    for k, v in {"RANKTUNE_MODEL_QUANTIZATION": "none", "RANKTUNE_MODEL_DEVICE": "cpu",
                 "RANKTUNE_MODEL_MAX_SEQ_LEN": "64", "RANKTUNE_LORA_DROPOUT": "0.0"}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.slow
def test_eval_scores_base_and_versions_on_a_judged_file(
    sqlite_engine: Engine, make_versions: Callable[..., list[str]], artifacts_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    judged = tmp_path / "judged.tsv"
    judged.write_text(JUDGED)
    _env(monkeypatch, tmp_path, artifacts_dir)
    assert cli_main(["eval", "--judgements", str(judged), "--versions", f"base,champion,{v1}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["version"]: r for r in doc["results"]}
    assert set(rows) == {"base", "champion (base)", v1}
    base = rows["base"]
    # scarf: the base ranks a1 (3) first: NDCG 1. Boots: b1 (3) first, then the dress (0) above the mouse
    # (graded 1 on purpose): DCG = 7 + 0 + 1/log2(4) against the ideal 7 + 1/log2(3). MRR is 1 for both.
    assert (base["n_queries"], base["n_skipped"]) == (2, 1)
    boots = (7 + 1 / math.log2(4)) / (7 + 1 / math.log2(3))
    assert base["ndcg10"] == pytest.approx((1.0 + boots) / 2) and base["mrr"] == pytest.approx(1.0)
    assert rows["champion (base)"]["ndcg10"] == base["ndcg10"]
    assert 0.0 < rows[v1]["ndcg10"] <= 1.0 and rows[v1]["ndcg10_ci"][0] <= rows[v1]["ndcg10"]


def test_eval_refuses_a_missing_or_malformed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANKTUNE_STORAGE_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert cli_main(["eval", "--judgements", str(tmp_path / "nope.tsv")]) == 2
    assert "no file" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\ti\tt\tvery\n")
    assert cli_main(["eval", "--judgements", str(bad)]) == 2
    assert "not a number" in capsys.readouterr().err


def test_simulate_from_judgements_writes_position_biased_clicks(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    judged = tmp_path / "judged.tsv"
    judged.write_text(JUDGED)
    out = tmp_path / "clicks.jsonl"
    argv = ["simulate", "--from-judgements", str(judged), "--events", "400", "--page-size", "3", "--eta", "1.0",
            "--explore-rate", "0.5", "--seed", "3", "--out", str(out)]
    assert cli_main(argv) == 0
    events = [json.loads(value) for _topic, _key, value in read_jsonl(out)]
    pages = {e["request_id"] for e in events}
    assert len(pages) == 400
    impressions = [e for e in events if e["action"] == "impression"]
    assert {e["query"] for e in impressions} <= {"red wool scarf", "waterproof hiking boots", "only one grade here"}
    assert all(0 <= e["position"] < 3 for e in impressions)
    explored = {e["request_id"] for e in impressions if e.get("explore")}
    assert 0.3 < len(explored) / len(pages) < 0.7  # --explore-rate 0.5 marks about half the pages
    assert all("ranked_position" in e for e in impressions if e.get("explore"))
    clicks = [e for e in events if e["action"] == "click"]
    top = sum(1 for e in clicks if e["position"] == 0)
    assert clicks and top > len(clicks) / 3  # examination falls with position: the top gets the most clicks
    again = tmp_path / "again.jsonl"
    assert cli_main([*argv[:-1], str(again)]) == 0
    assert again.read_text() == out.read_text()  # deterministic for a seed
