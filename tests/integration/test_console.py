"""The web console in a real browser (Debian's chromium through Playwright) against a real `ranktune serve`.

The registry has several versions, runs with training curves, a drift that fired and the retrain it
triggered (`tests.fixtures.history`). The test signs in, checks that versions, gate verdicts, curves and
drift charts render, promotes a candidate through the dialog (token + reason), sees the audit row, rolls
back, and saves the screenshots the README shows (`docs/console*.png`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.db import make_engine, upgrade
from tests.fixtures.history import History, build_history
from tests.fixtures.scoring import SPEC_KW, TOKEN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ranktune serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"ranktune serve was not ready within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def served_history(tmp_path: Path, reference_ranker: Any) -> Iterator[tuple[str, History]]:
    """A registry with a history on SQLite, served by `ranktune serve --no-control` in a subprocess."""
    db, artifacts = tmp_path / "ranktune.db", tmp_path / "artifacts"
    artifacts.mkdir()
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    history = build_history(reference_ranker, engine, artifacts)
    engine.dispose()
    port = _free_port()
    env = {**os.environ, "RANKTUNE_STORAGE_DATABASE_URL": f"sqlite:///{db}",
           "RANKTUNE_STORAGE_ARTIFACTS_DIR": str(artifacts), "RANKTUNE_API_PORT": str(port),
           "RANKTUNE_API_TOKEN": TOKEN, "RANKTUNE_SCORER_RECONCILE_INTERVAL_S": "5",
           **{f"RANKTUNE_MODEL_{k.upper()}": str(v) for k, v in SPEC_KW.items()}}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "serve", "--no-control"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield url, history
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_console_shows_the_history_and_promotes(served_history: tuple[str, History], browser: Any) -> None:
    url, h = served_history
    v1, v2, v3, v4 = h.versions
    page = browser.new_page(viewport={"width": 1400, "height": 760})
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    page.on("console", lambda m: js_errors.append(m.text) if m.type == "error" and "401" not in m.text else None)

    page.goto(f"{url}/ui/")  # not signed in yet: the operator endpoints refuse, the page says why
    page.wait_for_selector("[data-testid=error]")
    assert "operator token" in page.inner_text("[data-testid=error]")
    page.fill("[data-testid=token]", TOKEN)
    page.click("[data-testid=token-save]")
    page.wait_for_selector(f"[data-testid=version-row-{v4}]")
    assert page.inner_text("[data-testid=champion]") == v2
    rows = {v: page.inner_text(f"[data-testid=version-row-{v}]") for v in h.versions}
    assert "champion" in rows[v2] and "retired" in rows[v1] and "candidate" in rows[v4]
    assert "FAIL" in rows[v3] and "PASS" in rows[v4] and "0.6810" in rows[v4] and "+0.0120" in rows[v4]

    page.click(f"a[href='#/versions/{v2}']")  # the drift retrain: curve, best step, propensity, audit history
    page.wait_for_selector("[data-testid=curve-chart] canvas")
    page.wait_for_selector("[data-testid=propensity-chart] canvas")
    assert "best step 60" in page.inner_text("[data-testid=version-page]")
    history_rows = page.locator("[data-testid=version-audit] [data-testid=audit-row]")
    assert history_rows.count() == 1 and f"{v1} → {v2}" in history_rows.first.inner_text()
    page.screenshot(path=str(DOCS / "console-version.png"), full_page=True)

    page.goto(f"{url}/ui/#/drift")
    for stat in ("score_psi", "term_js", "unseen_item_share", "unseen_term_share", "ndcg10_drop"):
        page.wait_for_selector(f"[data-testid=drift-{stat}] canvas")
    page.wait_for_selector("[data-testid=triggered-run]")
    assert f"run #{h.drift_run} succeeded" in page.inner_text("[data-testid=drift-fired]")
    page.screenshot(path=str(DOCS / "console-drift.png"), full_page=True)

    page.goto(f"{url}/ui/#/compare/{v2}/{v4}")
    page.wait_for_selector("[data-testid=compare-chart] canvas")
    assert "best 80" in page.inner_text("[data-testid=compare-table]")
    page.goto(f"{url}/ui/#/ingest")
    page.wait_for_selector("[data-testid=ingest-rate] canvas")
    assert f"{h.events} (" in page.inner_text("[data-testid=ingest-totals]")

    page.goto(f"{url}/ui/#/versions")  # promote through the dialog: token and reason
    page.click(f"[data-testid=promote-{v4}]")
    page.wait_for_selector("[data-testid=action-dialog]")
    assert page.input_value("[data-testid=dialog-token]") == TOKEN
    page.fill("[data-testid=dialog-reason]", "best holdout NDCG after the drift")
    page.click("[data-testid=dialog-confirm]")
    page.wait_for_selector("[data-testid=notice]")
    assert f"{v2} → {v4}" in page.inner_text("[data-testid=notice]")
    page.wait_for_function(f"document.querySelector('[data-testid=champion]').innerText === '{v4}'")
    assert page.inner_text("[data-testid=served]") == f"serving {v4}"
    page.screenshot(path=str(DOCS / "console.png"), full_page=True)

    page.goto(f"{url}/ui/#/audit")
    page.wait_for_selector("[data-testid=audit-row]")
    newest = page.locator("[data-testid=audit-row]").first.inner_text()
    assert "promote" in newest and f"{v2} → {v4}" in newest and "best holdout NDCG after the drift" in newest
    audit = httpx.get(f"{url}/v1/audit", params={"limit": 1}, headers=AUTH).json()["items"][0]
    assert (audit["action"], audit["to_version"], audit["actor"]) == ("promote", v4, "api@127.0.0.1")

    page.goto(f"{url}/ui/#/versions")  # and back
    page.click("[data-testid=rollback]")
    page.fill("[data-testid=dialog-reason]", "undo the test promotion")
    page.click("[data-testid=dialog-confirm]")
    page.wait_for_function(f"document.querySelector('[data-testid=champion]').innerText === '{v2}'")
    assert httpx.get(f"{url}/readyz").json()["adapter_version"] == v2
    assert js_errors == []
