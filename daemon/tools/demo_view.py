"""The demo's terminal view, its plot and its JSON report (kept apart from the orchestration)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from daemon.settings import Settings
from daemon.tools.demo_config import DemoConfig, DemoState
from storage import registry
from storage.db import make_engine, session_scope

if TYPE_CHECKING:
    from daemon.app import Application


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


class DemoView:
    """A rich Live panel: traffic, ingestion, drift, training, versions, NDCG against the truth."""

    def __init__(self, state: DemoState, app: Application, cfg: DemoConfig) -> None:
        self.state, self.app, self.cfg = state, app, cfg
        self._live: Live | None = None

    @contextlib.contextmanager
    def live(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        with Live(self.render(), refresh_per_second=2, console=Console(stderr=True)) as live:
            self._live = live
            yield
        self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def render(self) -> Group:
        st, app = self.state, self.app
        stats = app.stats.snapshot()
        top = Table.grid(padding=(0, 2))
        drift_at = f"drift at {st.drift_produced_at:.0f}s" if st.drift_produced_at else "pre-drift traffic"
        top.add_row(f"[bold]ranktune demo[/]  {st.elapsed():.0f}s / {self.cfg.duration_s:.0f}s",
                    f"produced {st.produced}", drift_at)
        top.add_row(f"ingested {stats.get('stored', 0)}", f"dead-lettered {stats.get('deadlettered', 0)}",
                    f"duplicates {stats.get('duplicates', 0)}")
        served = app.serve.scorer.version if app.serve and app.serve.scorer else "-"
        tr = st.training
        training = "idle"
        if app.coordinator is not None and app.coordinator.busy:
            step = f"{tr.get('step', 0)}/{tr.get('total_steps', '?')}"
            training = (f"training ({app.coordinator.state.running}) step {step}"
                        f" holdout NDCG@10 {_f(tr.get('holdout_ndcg10'))}")
        top.add_row(f"serving [bold green]{served}[/]", training, "")
        drift = Table(title="drift reports (newest first)", expand=True)
        for col in ("t", "psi", "term JS", "unseen", "NDCG recent/ref", "fired"):
            drift.add_column(col)
        assert app.engine is not None
        with session_scope(app.engine) as s:
            reports = registry.recent_drift(session=s, limit=4)
            versions = registry.list_versions(session=s)
        for r in reports:
            drift.add_row(r.created_at.strftime("%H:%M:%S"), _f(r.score_psi), _f(r.term_js),
                          _f(max(r.unseen_item_share or 0, r.unseen_term_share or 0)),
                          f"{_f(r.recent_ndcg)}/{_f(r.reference_ndcg)}", "[red]yes[/]" if r.fired else "no")
        vt = Table(title="adapter versions", expand=True)
        for col in ("version", "status", "gate", "NDCG gain", "reasons"):
            vt.add_column(col)
        for v in versions[-5:]:
            gate = v.gate or {}
            vt.add_row(v.version, v.status, "pass" if gate.get("passed") else "fail",
                       _f(gate.get("ndcg_gain"), "+.4f"), "; ".join(gate.get("reasons", []))[:70])
        ev = Table(title="NDCG@10 vs ground truth (served model, via HTTP)", expand=True)
        for col in ("t", "version", "pre-drift queries", "post-drift queries"):
            ev.add_column(col)
        for e in st.evaluations[-6:]:
            ev.add_row(f"{e['t']:.0f}s", e["version"], _f(e["ndcg_pre"]), _f(e["ndcg_post"]))
        return Group(top, drift, vt, ev)


def write_outputs(state: DemoState, app: Application, cfg: DemoConfig, settings: Settings) -> dict[str, Any]:
    """Write report.json and ndcg_drift.png; print the summary; return the report."""
    # the app's engine is disposed by now
    engine = make_engine(settings.storage.sqlalchemy_url, **settings.storage.engine_options)
    with session_scope(engine) as s:
        drift = [{"t": r.created_at.isoformat(), "psi": r.score_psi, "term_js": r.term_js,
                  "unseen_item": r.unseen_item_share, "unseen_term": r.unseen_term_share,
                  "recent_ndcg": r.recent_ndcg, "reference_ndcg": r.reference_ndcg, "fired": r.fired,
                  "reasons": r.reasons} for r in reversed(registry.recent_drift(session=s, limit=1000))]
        runs = [{"id": r.id, "trigger": r.trigger, "status": r.status, "seconds": r.seconds,
                 "candidate": r.candidate_version, "gate_passed": (r.gate or {}).get("passed"),
                 "reason": r.reason, "error": r.error} for r in reversed(registry.recent_runs(session=s, limit=1000))]
        audit = [{"ts": a.ts.isoformat(), "actor": a.actor, "action": a.action, "from": a.from_version,
                  "to": a.to_version, "reason": a.reason} for a in reversed(registry.audit_log(session=s, limit=1000))]
        champion = registry.champion(session=s)
    engine.dispose()
    evals = state.evaluations
    first_post_drift_swap = next((sw for sw in state.swaps if state.drift_produced_at is not None
                                  and sw["t"] > state.drift_produced_at), None)
    report: dict[str, Any] = {
        "duration_s": round(state.elapsed(), 1), "events_produced": state.produced,
        "drift_point_s": state.drift_produced_at, "ingest": app.stats.snapshot(), "champion": champion,
        "swaps": state.swaps, "evaluations": evals, "drift_reports": drift,
        "closed_loop": cfg.closed_loop, "pages_ordered": state.pages,
        "training_runs": [r for r in runs if r["status"] != "skipped"],
        "skipped_runs": sum(1 for r in runs if r["status"] == "skipped"), "audit": audit,
        "ndcg_first": evals[0] if evals else None, "ndcg_last": evals[-1] if evals else None,
        "drift_to_promotion_s": (first_post_drift_swap["t"] - state.drift_produced_at)
        if first_post_drift_swap and state.drift_produced_at is not None else None,
    }
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(state, drift, cfg)
    _print_summary(report, cfg)
    return report


def _plot(state: DemoState, drift: list[dict[str, Any]], cfg: DemoConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=False)
    t = [e["t"] for e in state.evaluations]
    ax1.plot(t, [e["ndcg_pre"] for e in state.evaluations], "o-", label="pre-drift queries")
    ax1.plot(t, [e["ndcg_post"] for e in state.evaluations], "s-", label="post-drift queries")
    for sw in state.swaps:
        ax1.axvline(sw["t"], color="green", ls=":", lw=1)
        ax1.annotate(sw["to"], (sw["t"], ax1.get_ylim()[0]), fontsize=8, color="green")
    if state.drift_produced_at is not None:
        ax1.axvline(state.drift_produced_at, color="red", ls="--", lw=1, label="drift point")
    ax1.set_ylabel("NDCG@10 (ground truth)")
    ax1.set_xlabel("seconds since start")
    ax1.legend(loc="lower left", fontsize=8)
    ax1.set_title("served ranking quality")
    idx = list(range(len(drift)))
    # A report without a recent window (no traffic since the champion's training data) has no
    # statistics: a gap in the line, not a zero.
    nan = float("nan")
    unseen = [nan if d["unseen_item"] is None and d["unseen_term"] is None
              else max(d["unseen_item"] or 0, d["unseen_term"] or 0) for d in drift]
    ax2.plot(idx, [nan if d["psi"] is None else d["psi"] for d in drift], "o-", label="score PSI")
    ax2.plot(idx, [nan if d["term_js"] is None else d["term_js"] for d in drift], "s-", label="query-term JS")
    ax2.plot(idx, unseen, "^-", label="unseen share")
    for i, d in enumerate(drift):
        if d["fired"]:
            ax2.axvline(i, color="red", alpha=0.2)
    ax2.set_xlabel("drift report #")
    ax2.set_ylabel("statistic")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.set_title("drift detectors (red: fired)")
    fig.tight_layout()
    fig.savefig(cfg.out / "ndcg_drift.png", dpi=110)
    plt.close(fig)


def _print_summary(report: dict[str, Any], cfg: DemoConfig) -> None:
    console = Console()
    console.rule("ranktune demo summary")
    console.print(f"ran {report['duration_s']}s, produced {report['events_produced']} events, "
                  f"drift point at {_f(report['drift_point_s'], '.0f')}s, champion now {report['champion']}")
    console.print(f"ingest: {report['ingest']}")
    for r in report["training_runs"]:
        console.print(f"training run {r['id']} ({r['trigger']}): {r['status']} {r['candidate'] or ''} "
                      f"gate {'pass' if r['gate_passed'] else 'fail'} {r['error'] or ''}")
    for sw in report["swaps"]:
        console.print(f"swap at {sw['t']:.0f}s: {sw['from']} -> {sw['to']}")
    first, last = report["ndcg_first"], report["ndcg_last"]
    if first and last:
        console.print(f"NDCG@10 pre-drift queries: {first['ndcg_pre']:.3f} ({first['version']}) -> "
                      f"{last['ndcg_pre']:.3f} ({last['version']})")
        console.print(f"NDCG@10 post-drift queries: {first['ndcg_post']:.3f} -> {last['ndcg_post']:.3f}")
    if report["drift_to_promotion_s"] is not None:
        console.print(f"drift point to first swap after it: {report['drift_to_promotion_s']:.0f}s")
    console.print(f"wrote {cfg.out / 'report.json'} and {cfg.out / 'ndcg_drift.png'}")
