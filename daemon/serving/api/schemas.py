"""Response models of the HTTP API, shared by the routes and the Python client (`daemon.client`).

This module imports pydantic only (no FastAPI, no model stack), so `daemon.client` stays light. The routes
declare these as `response_model`s, which puts them into the OpenAPI document.

Paged lists are newest first and use a keyset cursor: pass a page's `next_before` as `before` to get the
next (older) page; `next_before` is null on the last page. Runs, drift reports and audit rows are
append-only with increasing ids, so a cursor never repeats or skips a row when rows are added between
two requests, which `limit`/`offset` would (every new row shifts the offsets by one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from storage.models import DriftStatistics, as_utc

_EARLIEST, _LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _query_time(ts: datetime) -> datetime:
    """A timestamp of a query string, as UTC (without a zone: UTC), between 1970 and 9000, so that a window
    around it stays a valid time: 422, not 500, for `0001-01-01T00:00:00+14:00` or `9999-12-31T23:59:59`."""
    try:
        out = as_utc(ts)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    if not _EARLIEST <= out < _LATEST:
        raise ValueError(f"timestamp out of range: from {_EARLIEST.isoformat()} to before {_LATEST.isoformat()}")
    return out


QueryTime = Annotated[datetime, AfterValidator(_query_time)]
"""A `datetime` query parameter: UTC, in a range where windows and conversions cannot overflow."""


class _Open(BaseModel):
    """A record stored as JSON whose writers may add fields: unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow")


# --- scoring -------------------------------------------------------------------------------------
class ScoredItem(BaseModel):
    item_id: str
    score: float
    rank: int = Field(description="1 = best")


class Timing(BaseModel):
    total_ms: float = Field(description="Arrival to answer, inside the server.")
    queue_ms: float = Field(description="Waiting for the scorer's round to start.")
    model_ms: float = Field(description="The round's model time (shared with its batch-mates).")
    round_pairs: int = Field(description="Pairs in the round this request was scored in.")


class ScoreResponse(BaseModel):
    adapter_version: str = Field(description="The adapter version that produced every score (`base`: none).")
    items: list[ScoredItem] = Field(description=(
        "Best first, except in an explored response: then in the order to show, with each item's model `rank`."))
    timing: Timing
    explore: bool = Field(False, description=(
        "True: this response's order was perturbed on purpose (`scorer.explore_rate`); show it as listed and "
        "send `explore: true` and `ranked_position` (`rank` - 1) with the page's feedback events."))
    explore_mode: str | None = Field(None, description="How an explored order was perturbed (`scorer.explore_mode`).")


# --- versions and operator actions ---------------------------------------------------------------
class VersionOut(BaseModel):
    version: str
    status: str
    parent_version: str | None = None
    base_model: str | None = None
    quantization: str | None = None
    created_at: datetime | None = None
    checksum: str | None = None
    training_run_id: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None


class AuditOut(BaseModel):
    id: int | None
    ts: datetime
    actor: str
    action: str
    from_version: str | None
    to_version: str | None
    reason: str | None
    details: dict[str, Any] = Field(default_factory=dict)


class AdaptersOut(BaseModel):
    champion: str
    previous: str | None
    served: str = Field(description="The version this replica serves now.")
    versions: list[VersionOut]


class VersionDetailOut(VersionOut):
    history: list[AuditOut] = Field(description="Audit rows naming this version, newest first.")


class ActionOut(BaseModel):
    action: str
    from_version: str
    to_version: str
    audit_id: int
    published: bool = Field(description="The control notice reached the broker (other replicas swap now).")
    publish_error: str | None = None
    served: str = Field(description="The version this replica serves after its local swap.")
    local_swap: str = Field(description="ok, or why this replica did not swap (it retries on reconcile).")


# --- training runs ---------------------------------------------------------------------------------
class GateOut(_Open):
    """The gate's verdict with its numbers, as stored (`daemon.training.messages.GateVerdict.record`)."""

    compared_with: str | None = None
    passed: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    ndcg_gain: float | None = Field(None, description="Candidate minus champion holdout NDCG@10.")
    bootstrap_p_gain: float | None = Field(None, description="Share of paired bootstrap resamples with a gain.")
    ci_low: float | None = None
    ci_high: float | None = None
    regression_delta: float | None = Field(None, description="Candidate minus champion on the regression holdout.")
    offpage_delta: float | None = Field(
        None, description="Candidate minus champion: change in the NDCG@10 of the holdout pages when items of "
        "other pages are added (the off-page check; below 0: the candidate ranks them higher).")
    n_groups: int | None = None
    candidate_ndcg: float | None = None
    champion_ndcg: float | None = None


class CurvePoint(_Open):
    """One holdout evaluation during training."""

    step: int
    epoch: int | None = None
    elapsed_s: float | None = None
    lr: float | None = None
    train_loss: float | None = None
    holdout_ndcg10: float | None = None
    holdout_mrr: float | None = None
    holdout_auc: float | None = None
    holdout_loss: float | None = None


class PropensityOut(_Open):
    """An estimated position-bias propensity curve: `estimated[k]` for position k+1."""

    estimated: list[float]
    method: str | None = None


class RunOut(BaseModel):
    id: int
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    candidate_version: str | None = None
    device: str | None = None
    quantization: str | None = None
    n_train: int | None = None
    n_holdout: int | None = None
    n_regression: int | None = None
    n_replay: int | None = None
    steps: int | None = None
    best_step: int | None = None
    early_stopped: bool | None = None
    seconds: float | None = None
    examples_per_s: float | None = None
    holdout_ndcg10: float | None = Field(None, description="The candidate's holdout NDCG@10 at its best step.")
    gate: GateOut | None = None
    reason: str | None = None
    error: str | None = None


class RunDetailOut(RunOut):
    curve: list[CurvePoint] = Field(description="Holdout metrics at each evaluation step, oldest first.")
    best: CurvePoint | None = Field(None, description="The evaluation at `best_step` (the weights kept).")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Candidate and champion holdout/regression.")
    propensity: PropensityOut | None = Field(None, description="Position-bias propensities, when estimated.")


class RunsPage(BaseModel):
    items: list[RunOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end.")


# --- drift -----------------------------------------------------------------------------------------
class DriftThresholds(BaseModel):
    """The configured thresholds. A detector fires above its threshold *plus* a noise floor measured on the
    data itself; a fired report's `reasons` give both numbers."""

    score_psi: float
    term_js: float
    unseen_item_share: float
    unseen_term_share: float
    ndcg10_drop: float


class DriftOut(DriftStatistics):
    id: int
    created_at: datetime
    champion_version: str
    ndcg10_drop: float | None = Field(None, description="reference_ndcg - recent_ndcg.")
    fired: bool
    reasons: list[str]
    retrain_request: str | None = Field(
        None, description="The coordinator's answer to the retrain this report asked for (started, queued, ...).")
    triggered_runs: list[int] = Field(default_factory=list, description="Ids of the drift retrains it started.")


class DriftPage(BaseModel):
    items: list[DriftOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end.")
    thresholds: DriftThresholds


# --- audit -----------------------------------------------------------------------------------------
class AuditPage(BaseModel):
    items: list[AuditOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end.")


# --- ingestion -------------------------------------------------------------------------------------
class IngestStored(BaseModel):
    """What the database holds, whichever process ingested it."""

    feedback_events: int
    labelled_events: int
    catalog_items: int
    latest_ingested_at: datetime | None = None


class RateBucket(BaseModel):
    start: datetime
    events: int
    events_per_s: float


class IngestRate(BaseModel):
    """Feedback events stored per bucket of ingestion time, oldest first (empty buckets included)."""

    bucket_s: int
    since: datetime
    until: datetime
    buckets: list[RateBucket]
    next_until: datetime | None = Field(description="Pass as `until` for the previous (older) window.")


class IngestStatsOut(BaseModel):
    process: dict[str, Any] | None = Field(
        description="Counters of the ingest loop in the process that answers (consumed, stored, duplicates, "
        "dead_lettered, lag, and any per-reason breakdowns); all zero in a process without the ingest role, "
        "null when the process has no counters at all.")
    stored: IngestStored
    rate: IngestRate


# --- health ----------------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    adapter_version: str
    control: str = Field(description="State of the control-topic listener (`off` without one).")
