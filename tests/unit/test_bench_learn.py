"""`ranktune bench learn` is registered and runs end to end on its smallest configuration (a smoke test: the
real bench is run by hand, its numbers go in the README, never into a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.cli import main


@pytest.mark.slow
def test_bench_learn_smallest_config_gives_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lines = tmp_path / "learn.json", tmp_path / "learn.jsonl"
    code = main(["bench", "learn", "--shops", "fashion-lexical", "--seeds", "1", "--log-pages", "60",
                 "--train-pages", "40", "--judged-queries", "4", "--candidates", "8", "--model", "proxy",
                 "--learners", "naive,corrected", "--quantization", "none", "--out", str(out), "--jsonl", str(lines)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc == json.loads(capsys.readouterr().out)
    assert doc["benchmark"] == "learn" and doc["options"]["log_pages"] == 60 and len(doc["results"]) == 1
    r = doc["results"][0]
    assert (r["shop"], r["seed"]) == ("fashion-lexical", 1) and set(r["learners"]) == {"zero-shot", "naive",
                                                                                          "corrected"}
    for learner in ("naive", "corrected"):
        cell = r["learners"][learner]
        assert 0.0 <= cell["gt_ndcg10"] <= 1.0 and isinstance(cell["fair_gate"], bool)
        assert cell["min_detectable_gain"] >= 0.0
    assert len(r["propensity"]["estimated"]) == len(r["propensity"]["true"]) == 10
    assert r["promoted"]["learner"] in ("zero-shot", "corrected")
    assert "| fashion-lexical | lexical |" in doc["table"] and "**promoted**" in doc["table"]
    assert json.loads(lines.read_text().splitlines()[0]) == r  # appended as it ran
