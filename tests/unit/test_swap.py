"""Hot-swap mechanics (adapters.swap) and the scorer worker: batching, versions, refusals."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy.engine import Engine

from adapters.errors import SwapRefused
from adapters.swap import BASE, AdapterSwapper
from daemon.errors import Overloaded
from daemon.serving.control import Reconciler, load_registered, registered_loader
from daemon.serving.scorer import Scorer, ScorerUnavailable
from daemon.tools.synthetic_adapters import synthetic_state
from storage import registry
from storage.db import session_scope

QUERY = "waterproof hiking boots"
TEXTS = ["Leather hiking boot, waterproof membrane", "Cotton summer dress", "Trail running shoe", "Wool socks"]


@pytest.fixture
def scorer(serving_ranker: Any, sqlite_engine: Engine, artifacts_dir: Path) -> Any:
    s = Scorer(serving_ranker, loader=registered_loader(sqlite_engine, artifacts_dir), max_batch=16, max_wait_ms=20)
    s.start()
    s.mark_ready()
    yield s
    s.stop()


def test_swapper_names_are_unique_and_old_adapter_is_retired(serving_ranker: Any, reference_ranker: Any) -> None:
    sw = AdapterSwapper(serving_ranker)
    state, cfg = synthetic_state(reference_ranker, seed=1)
    a = sw.swap("v0001", state, cfg)
    b = sw.swap("v0001", state, cfg)  # the same version again gets a new name
    assert a.name != b.name and a.name and b.name and a.name.startswith("v0001__")
    assert serving_ranker.active == b.name
    assert serving_ranker.adapter_names == (b.name,)  # a was deleted after b became active
    sw.swap(BASE, {}, {})
    assert serving_ranker.active is None and serving_ranker.adapter_names == ()


def test_swapper_refuses_non_finite_probe(serving_ranker: Any, reference_ranker: Any) -> None:
    sw = AdapterSwapper(serving_ranker)
    good, cfg = synthetic_state(reference_ranker, seed=2)
    sw.swap("v0002", good, cfg)
    served = sw.served
    bad = {k: (torch.full_like(v, float("nan")) if "classifier" in k else v) for k, v in good.items()}
    with pytest.raises(SwapRefused, match="non-finite"):
        sw.swap("v0003", bad, cfg)
    assert sw.served == served and serving_ranker.active == served.name
    assert serving_ranker.adapter_names == (served.name,)  # the refused adapter was removed
    wrong_shape = {k: v[..., :1] for k, v in good.items()}
    with pytest.raises(SwapRefused, match="cannot be loaded"):
        sw.swap("v0004", wrong_shape, cfg)
    assert sw.served == served


def test_scorer_batches_requests_and_names_the_version(
    scorer: Scorer, sqlite_engine: Engine, make_versions: Callable[..., list[str]], reference_ranker: Any,
    artifacts_dir: Path,
) -> None:
    base = scorer.score(QUERY, TEXTS, timeout_s=30)
    assert base.version == BASE
    np.testing.assert_allclose(base.scores, reference_ranker.score(QUERY, TEXTS, adapter=None), atol=1e-4)

    (v1,) = make_versions(sqlite_engine, 1)
    assert scorer.swap_to(v1).changed
    assert scorer.swap_to(v1).changed is False  # already served: no-op
    futures = [scorer.submit([(QUERY, t) for t in TEXTS]) for _ in range(4)]
    results = [f.result(30) for f in futures]
    assert {r.version for r in results} == {v1}
    assert max(r.round_pairs for r in results) > len(TEXTS)  # requests shared a round
    assert all(r.round_pairs <= 16 for r in results)
    loaded = load_registered(sqlite_engine, artifacts_dir, v1)
    reference_ranker.add_adapter("ref_batches", loaded.state, loaded.peft_config)
    try:
        expected = reference_ranker.score(QUERY, TEXTS, adapter="ref_batches")
    finally:
        reference_ranker.delete_adapter("ref_batches")
    for r in results:
        np.testing.assert_allclose(r.scores, expected, atol=1e-4)
    big = scorer.score(QUERY, TEXTS * 10, timeout_s=30)  # 40 pairs > max_batch: one round, several forwards
    np.testing.assert_allclose(big.scores, np.tile(expected, 10), atol=1e-4)


@pytest.mark.parametrize("damage", ["corrupt", "missing", "wrong_checksum"])
def test_broken_artifact_is_refused_and_champion_keeps_serving(
    damage: str, scorer: Scorer, sqlite_engine: Engine, make_versions: Callable[..., list[str]], artifacts_dir: Path,
) -> None:
    v1, v2 = make_versions(sqlite_engine, 2)
    scorer.swap_to(v1)
    before = scorer.score(QUERY, TEXTS, timeout_s=30)
    if damage == "corrupt":
        weights = artifacts_dir / v2 / "adapter_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "missing":
        for f in (artifacts_dir / v2).iterdir():
            f.unlink()
        (artifacts_dir / v2).rmdir()
    else:
        with session_scope(sqlite_engine) as s:
            registry.get_version(session=s, version=v2).checksum = "0" * 64
    with pytest.raises(SwapRefused):
        scorer.swap_to(v2)
    after = scorer.score(QUERY, TEXTS, timeout_s=30)
    assert after.version == v1 == scorer.version
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-5)
    samples = scorer.metrics.registry.get_sample_value("ranktune_swaps_total", {"outcome": "refused"})
    assert samples == 1.0


def test_reconciler_heals_a_missed_notice(scorer: Scorer, sqlite_engine: Engine,
                                          make_versions: Callable[..., list[str]]) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    with session_scope(sqlite_engine) as s:  # promoted without any control notice
        registry.promote(session=s, version=v1, actor="test")
    rec = Reconciler(sqlite_engine, scorer, interval_s=0.2)
    rec.start()
    try:
        for _ in range(100):
            if scorer.version == v1:
                break
            threading.Event().wait(0.05)
    finally:
        rec.stop()
    assert scorer.version == v1


def test_a_swap_that_times_out_is_withdrawn_and_never_applies_later(
        serving_ranker: Any, sqlite_engine: Engine, make_versions: Callable[..., list[str]], artifacts_dir: Path,
) -> None:
    (v1,) = make_versions(sqlite_engine, 1)
    s = Scorer(serving_ranker, loader=registered_loader(sqlite_engine, artifacts_dir), swap_timeout_s=0.3)
    s.start()
    s.mark_ready()
    gate = threading.Event()
    original = serving_ranker.score_pairs

    def slow(pairs: Any, **kw: Any) -> Any:
        gate.wait(10)
        return original(pairs, **kw)

    try:
        serving_ranker.score_pairs = slow  # the worker is held in a round when the swap is queued
        held = s.submit([(QUERY, TEXTS[0])])
        with pytest.raises(ScorerUnavailable, match="withdrawn, still serving base"):
            s.swap_to(v1)
        gate.set()
        assert held.result(30).version == BASE
        after = s.submit([(QUERY, TEXTS[0])]).result(30)
        assert after.version == BASE == s.version  # the timed-out swap did not apply behind the caller's back
        assert s.swap_to(v1).changed and s.version == v1  # and a later swap still works
    finally:
        gate.set()
        del serving_ranker.score_pairs
        s.stop()


def test_overloaded_and_not_ready(serving_ranker: Any, sqlite_engine: Engine, artifacts_dir: Path) -> None:
    s = Scorer(serving_ranker, loader=registered_loader(sqlite_engine, artifacts_dir), queue_size=2)
    with pytest.raises(ScorerUnavailable):
        s.submit([(QUERY, TEXTS[0])])
    s.start()
    s.mark_ready()
    gate = threading.Event()
    try:
        original = serving_ranker.score_pairs

        def slow(pairs: Any, **kw: Any) -> Any:
            gate.wait(10)
            return original(pairs, **kw)

        serving_ranker.score_pairs = slow  # hold the worker in its first round
        first = s.submit([(QUERY, TEXTS[0])])
        for _ in range(200):
            if not s._requests:
                break
            threading.Event().wait(0.01)
        queued = [s.submit([(QUERY, TEXTS[0])]) for _ in range(2)]
        with pytest.raises(Overloaded, match="queue is full"):
            s.submit([(QUERY, TEXTS[0])])
        gate.set()
        for f in [first, *queued]:
            assert f.result(30).version == BASE
    finally:
        gate.set()
        del serving_ranker.score_pairs
        s.stop()
    with pytest.raises(ScorerUnavailable):
        s.submit([(QUERY, TEXTS[0])])
