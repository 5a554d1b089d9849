"""Drift job: compares the traffic the champion was trained on with recent traffic; fires a retrain.

Windows. The *reference* is the newest `drift_window_events` events the champion trained on
(`ingested_at` <= its training run's `data_cutoff`); for the base model (or a version without a
cutoff) it is the oldest `drift_window_events` events stored: the traffic the service started on.
The *recent* window is the newest `drift_window_events` events after the reference.

Detectors, each firing when its statistic exceeds threshold + noise floor. On windows of a few
hundred result pages two samples of one distribution already differ, so textbook thresholds alone
fire on identical traffic. Each floor is measured on the reference window itself, by page (a page's
events share one query, so pages, not events, are the independent units; see `daemon.training.drift_stats`):

* prediction drift: PSI of the champion's scores on up to MAX_PAIRS (query, item) pairs per window;
  floor = max(chi-square expectation, mean + 2 sd of PSI between a recent-sized slice of the
  reference's pages and the rest, rescaled to the windows' sizes);
* input drift: Jensen-Shannon divergence of query-term distributions (one query per page; floor as
  for PSI), and the shares of recent events whose item, or some query term, the reference never had
  (floor = the leave-one-page-out share inside the reference + 2 binomial standard errors);
* performance drift: the champion's NDCG@10 on recent labelled pages against its holdout NDCG at
  promotion (for the base: on the reference window); floor = 2 standard errors of the difference.
  Labels are logged clicks, hence position-biased, but both sides are logged and grouped the same
  way (`dataset.build_groups`) and measured the same way: where the champion's holdout figure is
  position-debiased (its run used a propensity curve, `RANKTUNE_TRAIN_DEBIAS=ips`), the recent pages
  are scored with IPS-NDCG under that same curve, not with raw click NDCG. AUC is stored, not judged.

Default thresholds (`daemon.settings`), calibrated on simulated traffic (lexical scorer, 40 seeds per
case, 2000-event reference). PSI 0.2 is the usual "significant shift". JS 0.1 bits and an unseen share
of 0.15: on identical traffic the statistics stay below their floors plus 0.03 (JS), 0.005 (unseen
items) and 0 (unseen terms), while the simulator's drift exceeds the floors by at least 0.21, 0.18 and
0.48. Identical traffic fired 0/40 at 500 and 2000 recent events, 1-2/60 (PSI) at 200-300, hence a
minimum of 500 recent events (~40 pages); drifted traffic fired 40/40 at every size. An NDCG@10 drop of
0.05 is ten times the gain the gate asks of a candidate: a loss that size is worth a retrain.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session

from adapters import dataset
from adapters.product_text import product_text
from adapters.ranking_metrics import EvalResult, evaluate_groups
from daemon.settings import Settings
from daemon.training.drift_stats import (
    finite_or_none,
    js_divergence,
    loo_unseen_shares,
    null_floor,
    psi,
    psi_floor,
    share_floor,
    term_counts,
    unseen_shares,
)
from storage import events_repo, registry
from storage.db import session_scope
from storage.models import DriftReport, FeedbackEvent, TrainingRun, utcnow

log = logging.getLogger(__name__)

ScorePairs = Callable[[Sequence[tuple[str, str]]], Sequence[float]]
TextOf = Callable[[str], str | None]
OnReport = Callable[[DriftReport, Mapping[str, float]], None]
"""Called with each stored report and the noise floor of each statistic (for metrics)."""

MAX_PAIRS = 1024  # scored pairs per window for PSI: a few seconds of the live scorer, not minutes
SCORE_CHUNK = 256  # pairs per score_pairs call, so serving requests interleave with the drift job
MIN_GROUPS = 20  # labelled pages below which NDCG is too noisy to judge
NDCG_SE_FACTOR = 2.0


def _unit(row: dict[str, Any]) -> str:
    # One result page: the independent unit of traffic (rows of a page share query and scores).
    return str(row.get("request_id") or row.get("session_hash") or row["event_id"])


class DriftMonitor:
    """Computes and stores drift reports for the current champion.

    `score_pairs` scores (query, product text) pairs with the *current* champion (in the daemon it
    goes through the live scorer's queue). `text_of(item_id)` gives an item's product text; by
    default the catalog in the database, through `adapters.product_text`, like training.
    """

    def __init__(self, settings: Settings, engine: Engine, score_pairs: ScorePairs,
                 text_of: TextOf | None = None, *, seed: int = 0, on_report: OnReport | None = None,
                 served_version: Callable[[], str] | None = None) -> None:
        self._settings, self._engine, self._score_pairs, self._text_of = settings, engine, score_pairs, text_of
        self._seed = seed
        self._on_report = on_report
        self._served_version = served_version

    def check(self) -> DriftReport:
        """Compute one report between the reference and the recent window, store it, and return it."""
        s = self._settings
        with session_scope(self._engine) as session:
            champion = registry.champion(session=session)
            ref_events, holdout = self._reference(session, champion)
            # Strictly after the reference's newest ingestion time: events of a write batch share it,
            # so a batch cut by the reference's size limit is left out of both windows (never in both).
            since = ref_events[-1].ingested_at if ref_events else None
            rec_events = events_repo.recent_feedback(session=session, limit=s.drift.window_events, since=since)
            ref, rec = [e.model_dump() for e in ref_events], [e.model_dump() for e in rec_events]
            text_of = self._text_of or self._catalog_text_of(session, ref + rec)
        report = DriftReport(created_at=utcnow(), champion_version=champion, n_reference=len(ref),
                             n_recent=len(rec))
        # A minimum above the window size could never be met: the full window is enough then.
        need = min(s.drift.min_events, s.drift.window_events)
        floors: dict[str, float] = {}
        if len(rec) < need or len(ref) < need:
            short, n = ("recent", len(rec)) if len(rec) < need else ("reference", len(ref))
            report.reasons = [f"not enough {short} events ({n} < {need})"]
        elif (served := self._other_version(champion)) is not None:
            report.reasons = [served]
        else:
            check = _Check(s, ref, rec, text_of, self._score_pairs, holdout, self._seed)
            report.reasons = check.run(report)
            report.fired = bool(report.reasons)
            floors = check.floors
            if (served := self._other_version(champion)) is not None:  # a swap while the check scored
                report.reasons, report.fired, floors = [served], False, {}
        with session_scope(self._engine) as session:
            registry.add_drift_report(session=session, report=report)
        log.info("drift report %s: champion %s, %d/%d events, psi %s, js %s, unseen %s/%s, ndcg %s (ref %s)%s",
                 report.id, champion, report.n_reference, report.n_recent, _fmt(report.score_psi),
                 _fmt(report.term_js), _fmt(report.unseen_item_share), _fmt(report.unseen_term_share),
                 _fmt(report.recent_ndcg), _fmt(report.reference_ndcg),
                 f": FIRED {'; '.join(report.reasons)}" if report.fired else "")
        if self._on_report is not None:
            self._on_report(report, floors)
        return report

    def _other_version(self, champion: str) -> str | None:
        """Why the check cannot judge `champion` now (the live scorer serves another version: a swap that is
        late or was refused would compare its scores with the champion's holdout figure), else None."""
        served = self._served_version() if self._served_version is not None else champion
        if served == champion:
            return None
        return f"not judged: the scorer serves {served}, not the champion {champion} (a swap is pending)"

    def note_trigger(self, report: DriftReport, answer: str) -> DriftReport:
        """Append the retrain coordinator's answer (started, queued, cooldown, ...) to a stored report."""
        with session_scope(self._engine) as session:
            row = session.get(DriftReport, report.id)
            if row is not None:
                row.reasons = [*row.reasons, f"retrain requested: {answer}"]  # a new list: JSON columns
                session.add(row)  # do not track in-place mutation
                report = row
        return report

    def _reference(self, session: Session, champion: str) -> tuple[list[FeedbackEvent], dict[str, Any] | None]:
        """(reference events, the champion's holdout metrics at promotion or None for the base)."""
        cutoff, holdout = None, None
        if champion != registry.BASE:
            version = registry.get_version(session=session, version=champion)
            holdout = (version.metrics.get("candidate") or {}).get("holdout")
            bias = version.metrics.get("propensity") or {}
            if holdout is not None and bias.get("used") and bias.get("estimated"):
                # its holdout NDCG is position-debiased: the recent pages are measured under the same curve
                holdout = {**holdout, "propensity": [float(x) for x in bias["estimated"]]}
            run = session.get(TrainingRun, version.training_run_id) if version.training_run_id else None
            cutoff = run.data_cutoff if run else None
        if cutoff is None:
            return events_repo.oldest_feedback(session=session, limit=self._settings.drift.window_events), holdout
        return events_repo.recent_feedback(session=session, limit=self._settings.drift.window_events,
                                           until=cutoff), holdout

    @staticmethod
    def _catalog_text_of(session: Session, rows: Sequence[dict[str, Any]]) -> TextOf:
        items = events_repo.catalog_items(session=session, item_ids=sorted({r["item_id"] for r in rows}))
        texts = {item_id: product_text(item.model_dump()) for item_id, item in items.items()}
        return texts.get


def drift_job(monitor: DriftMonitor, request_retrain: Callable[[str], str]) -> Callable[[], None]:
    """The scheduler's drift job: one check; when it fires, ask for a retrain with trigger "drift".

    Cooldown and single-flight are the coordinator's (`TrainingCoordinator.request`); its answer is
    appended to the report's reasons so status shows whether the drift led to a run.
    """

    def drift_check() -> None:
        report = monitor.check()
        if report.fired:
            answer = request_retrain("drift")
            log.info("drift fired; retrain request answered %s", answer)
            monitor.note_trigger(report, answer)

    return drift_check


class _Check:
    """The three detectors over one pair of windows; `run` fills the report and returns the reasons."""

    def __init__(self, settings: Settings, ref: list[dict[str, Any]], rec: list[dict[str, Any]],
                 text_of: TextOf, score_pairs: ScorePairs, holdout: dict[str, Any] | None, seed: int) -> None:
        self.s, self.ref, self.rec, self.text_of, self.holdout = settings, ref, rec, text_of, holdout
        self._score_pairs, self._seed = score_pairs, seed
        self._cache: dict[tuple[str, str], float] = {}
        self.floors: dict[str, float] = {}  # noise floor of each statistic judged (for metrics)

    def run(self, report: DriftReport) -> list[str]:
        reasons: list[str] = []
        s = self.s
        js, js_floor = self.term_js()
        report.term_js = finite_or_none(js)
        _judge(reasons, "term_js", js, s.drift.term_js_threshold, js_floor)
        self.floors["term_js"] = js_floor
        (item_share, term_share), (item_floor, term_floor) = self.unseen()
        report.unseen_item_share, report.unseen_term_share = finite_or_none(item_share), finite_or_none(term_share)
        _judge(reasons, "unseen_item_share", item_share, s.drift.unseen_threshold, item_floor)
        _judge(reasons, "unseen_term_share", term_share, s.drift.unseen_threshold, term_floor)
        self.floors.update(unseen_item_share=item_floor, unseen_term_share=term_floor)
        score_psi, floor = self.score_psi()
        report.score_psi = finite_or_none(score_psi)
        _judge(reasons, "score_psi", score_psi, s.drift.psi_threshold, floor)
        self.floors["score_psi"] = floor
        recent, reference, drop_floor = self.performance()
        if recent is not None:
            report.recent_ndcg, report.recent_auc = recent.ndcg10, recent.auc
            report.reference_ndcg = finite_or_none(reference)
            _judge(reasons, "ndcg10_drop", reference - recent.ndcg10, s.drift.ndcg_drop, drop_floor,
                   f" (reference {reference:.3f}, recent {recent.ndcg10:.3f})")
            self.floors["ndcg10_drop"] = drop_floor
        return reasons

    # --- input drift ----------------------------------------------------------------------------
    def term_js(self) -> tuple[float, float]:
        # One query per page: a page's events repeat its query, which would weigh long pages more.
        ref_q, rec_q = _page_queries(self.ref), _page_queries(self.rec)
        names = list(ref_q)

        def stat(a: np.ndarray, b: np.ndarray) -> float:
            return js_divergence(term_counts(ref_q[names[i]] for i in a), term_counts(ref_q[names[i]] for i in b))

        js = js_divergence(term_counts(ref_q.values()), term_counts(rec_q.values()))
        return js, null_floor(stat, names, len(rec_q), len(rec_q), seed=self._seed)

    def unseen(self) -> tuple[tuple[float, float], tuple[float, float]]:
        ref_q, rec_q = [r["query"] for r in self.ref], [r["query"] for r in self.rec]
        ref_i, rec_i = [r["item_id"] for r in self.ref], [r["item_id"] for r in self.rec]
        item_share, term_share = unseen_shares(ref_q, ref_i, rec_q, rec_i)
        loo_item, loo_term = loo_unseen_shares(ref_q, ref_i, [_unit(r) for r in self.ref])
        n_pages = len({_unit(r) for r in self.rec})
        return (item_share, term_share), (share_floor(loo_item, n_pages), share_floor(loo_term, n_pages))

    # --- prediction drift -----------------------------------------------------------------------
    def score_psi(self) -> tuple[float, float]:
        ref_units, ref_pairs = self._sample_pairs(self.ref, self._seed)
        rec_units, rec_pairs = self._sample_pairs(self.rec, self._seed + 1)
        ref_scores, rec_scores = self.scores(ref_pairs), self.scores(rec_pairs)
        value = psi(ref_scores, rec_scores)
        empirical = null_floor(lambda a, b: psi(ref_scores[a], ref_scores[b]), ref_units, len(rec_scores),
                               len(set(rec_units)), seed=self._seed)
        return value, max(psi_floor(len(ref_scores), len(rec_scores)), empirical)

    def _sample_pairs(self, rows: list[dict[str, Any]], seed: int) -> tuple[list[str], list[tuple[str, str]]]:
        """Up to MAX_PAIRS distinct (page, item) pairs of a window as (units, (query, text))."""
        pairs: dict[tuple[str, str], tuple[str, str | None]] = {}
        for r in rows:  # oldest first: a later item_text of the same page wins, as in build_groups
            key = (_unit(r), r["item_id"])
            text = r.get("item_text") or (pairs[key][1] if key in pairs else None)
            pairs[key] = (r["query"], text)
        units, out = [], []
        for (unit, item), (query, text) in pairs.items():
            text = text or self.text_of(item)
            if text:
                units.append(unit)
                out.append((query, text))
        if len(out) > MAX_PAIRS:
            keep = np.sort(np.random.default_rng(seed).choice(len(out), MAX_PAIRS, replace=False))
            units, out = [units[i] for i in keep], [out[i] for i in keep]
        return units, out

    def scores(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Champion scores of `pairs`; each distinct pair is scored once per check."""
        missing = list(dict.fromkeys(p for p in pairs if p not in self._cache))
        for start in range(0, len(missing), SCORE_CHUNK):
            chunk = missing[start:start + SCORE_CHUNK]
            got = self._score_pairs(chunk)
            if len(got) != len(chunk):
                raise ValueError(f"score_pairs returned {len(got)} scores for {len(chunk)} pairs")
            self._cache.update(zip(chunk, (float(x) for x in got), strict=True))
        return np.array([self._cache[p] for p in pairs], dtype=float)

    # --- performance drift ----------------------------------------------------------------------
    def performance(self) -> tuple[EvalResult | None, float, float]:
        """(recent result, reference NDCG@10, noise floor of the drop); (None, nan, inf) if not judged."""
        stored = self.holdout or {}
        ref_ndcg = stored.get("ndcg10")
        recent = self._evaluate(self.rec, stored.get("propensity") if ref_ndcg is not None else None)
        if recent is None:
            return None, math.nan, math.inf
        rec_var = float(np.var(recent.per_group_ndcg, ddof=1))
        if ref_ndcg is not None:
            # Only the holdout's mean is stored: assume its pages vary like the recent ones.
            n_ref = int((self.holdout or {}).get("n_groups") or recent.n_groups)
            ref_var, reference = rec_var, float(ref_ndcg)
        else:
            ref_result = self._evaluate(self.ref)
            if ref_result is None:
                return recent, math.nan, math.inf
            n_ref, reference = ref_result.n_groups, ref_result.ndcg10
            ref_var = float(np.var(ref_result.per_group_ndcg, ddof=1))
        se = math.sqrt(rec_var / recent.n_groups + ref_var / max(n_ref, 1))
        return recent, reference, NDCG_SE_FACTOR * se

    def _evaluate(self, rows: list[dict[str, Any]], propensity: Sequence[float] | None = None) -> EvalResult | None:
        """Click NDCG@10 of the champion on `rows`' pages; IPS-NDCG under `propensity` when given."""
        groups = dataset.build_groups(rows, self.text_of)
        if len(groups) < MIN_GROUPS:
            log.info("performance drift not judged: %d labelled pages (< %d)", len(groups), MIN_GROUPS)
            return None
        # ignore: ranking_metrics' _Group protocol declares settable attributes, frozen QueryGroup has
        # read-only ones (the same error shows in adapters/training.py); drop it once the protocol is fixed
        return evaluate_groups(lambda q, texts: self.scores([(q, t) for t in texts]), groups,  # type: ignore[arg-type]
                               propensity=propensity, max_weight=self.s.train.ips_max_weight)


def _page_queries(rows: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(_unit(r), r["query"])
    return out


def _judge(reasons: list[str], name: str, value: float, threshold: float, floor: float, extra: str = "") -> None:
    # NaN/inf (an empty side, a statistic that cannot be measured) never fires: no evidence of drift.
    if math.isfinite(value) and math.isfinite(floor) and value > threshold + floor:
        reasons.append(f"{name} {value:.3f} > {threshold:.2f}+{floor:.3f}{extra}")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
