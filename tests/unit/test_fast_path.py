"""The CPU serving fast path (adapters.fast): exact tokenization from the cache, merged scores equal to the
quantized path's, ranking quality kept on the simulator's ground truth, and the scorer swapping with it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy.engine import Engine

from adapters.base import HEAD_MODULE_NAMES
from adapters.config import ModelSpec, default_base_model
from adapters.errors import SwapRefused
from adapters.fast import FastBase, FastPathUnavailable, cpu_has_native_bf16, resolve_serving_path
from adapters.pair_encoder import PairEncoder
from daemon.serving.control import registered_loader
from daemon.serving.scorer import Scorer
from daemon.tools.serving_quality import judgements, per_query_ndcg
from daemon.tools.synthetic_adapters import synthetic_state

SPEC = ModelSpec(path=default_base_model(), quantization="nf4", device="cpu", max_seq_len=32)
PAIRS = [("waterproof hiking boots", "Leather hiking boot, waterproof membrane, vibram sole"),
         ("waterproof hiking boots", "Cotton summer dress"),
         ("red", "A very long description " + "with many words that will not fit " * 6),
         ("a query that is itself rather long and keeps going " * 3, "short item"),
         ("lamp", "Brass desk lamp")]


@pytest.fixture(scope="module")
def nf4(load_ranker: Callable[..., Any]) -> Iterator[tuple[Any, dict[str, torch.Tensor], dict[str, Any]]]:
    """An nf4 ranker (the training base) with a synthetic adapter active, and that adapter's weights."""
    ranker = load_ranker("nf4", fresh=True)
    state, cfg = synthetic_state(ranker, seed=11, scale=0.2)
    ranker.add_adapter("fastpath_v1", state, cfg)
    ranker.set_active("fastpath_v1")
    yield ranker, state, cfg


@pytest.fixture(scope="module")
def fast_bases(nf4: Any) -> dict[str, FastBase]:
    return {path: FastBase(nf4[0], SPEC, path, batch_size=16) for path in ("merged-fp32", "merged-bf16", "merged-int8")}


def test_pair_encoder_equals_the_tokenizer_and_caches_texts(nf4: Any) -> None:
    tok = nf4[0].base.tokenizer
    enc = PairEncoder(tok, max_seq_len=24)
    for _ in range(2):
        got = enc.encode([q for q, _ in PAIRS], [t for _, t in PAIRS])
        want = tok([q for q, _ in PAIRS], [t for _, t in PAIRS], truncation=True, max_length=24)
        assert [ids for ids, _ in got] == want["input_ids"]
        assert [types for _, types in got] == want["token_type_ids"]
    assert enc.misses == len({q for q, _ in PAIRS}) + len({t for _, t in PAIRS})  # second round: all hits
    singles = enc.encode(["Brass desk lamp", "red"])
    assert [ids for ids, _ in singles] == tok(["Brass desk lamp", "red"], truncation=True, max_length=24)["input_ids"]
    batch = enc.tensors(got)
    assert batch["input_ids"].shape == (len(PAIRS), 24) and int(batch["attention_mask"][1].sum()) < 24


def test_pair_encoder_equals_the_tokenizer_on_long_pairs_of_every_length_mix() -> None:
    # Longest-first truncation of a pair depends on both full lengths; a cache of cut texts alone got
    # pairs with both sides long one token off.
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_base_model(), local_files_only=True)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "waterproof", "boots", "lamp", "brass", "desk", "cotton",
             "dress"]
    rnd = random.Random(0)
    for max_len in (16, 33, 128):
        enc = PairEncoder(tok, max_seq_len=max_len)
        qs = [" ".join(rnd.choice(words) for _ in range(rnd.randint(0, 150))) for _ in range(200)]
        ts = [" ".join(rnd.choice(words) for _ in range(rnd.randint(0, 150))) for _ in range(200)]
        want = tok(qs, ts, truncation=True, max_length=max_len)
        for _ in range(2):  # cold cache, then warm
            got = enc.encode(qs, ts)
            assert [ids for ids, _ in got] == want["input_ids"], max_len
            assert [types for _, types in got] == want["token_type_ids"], max_len
        assert [ids for ids, _ in enc.encode(ts)] == tok(ts, truncation=True, max_length=max_len)["input_ids"]


def test_merged_fp32_scores_like_the_quantized_path(nf4: Any, fast_bases: dict[str, FastBase]) -> None:
    ranker, state, cfg = nf4
    fb = fast_bases["merged-fp32"]
    before = {k: v.clone() for k, v in fb.template.state_dict().items()}
    model = fb.build("v0001", state, cfg)
    np.testing.assert_allclose(model.score_pairs(PAIRS), ranker.score_pairs(PAIRS), atol=1e-4)
    base = fb.build("base", {}, {})
    np.testing.assert_allclose(base.score_pairs(PAIRS), ranker.score_pairs(PAIRS, adapter=None), atol=1e-5)
    # building merges into a copy: the template (shared by every later build) is untouched
    assert all(torch.equal(before[k], v) for k, v in fb.template.state_dict().items())
    assert fb.encoder.hits > 0


def test_merged_int8_keeps_the_scores_close(nf4: Any, fast_bases: dict[str, FastBase]) -> None:
    ranker, state, cfg = nf4
    got = fast_bases["merged-int8"].build("v0001", state, cfg).score_pairs(PAIRS)
    ref = ranker.score_pairs(PAIRS)
    assert np.abs(got - ref).max() < 0.05 * (ref.max() - ref.min())  # scores within 5% of their spread
    assert np.argsort(-got).tolist() == np.argsort(-ref).tolist()


def test_merged_bf16_keeps_the_scores_closer_than_int8(nf4: Any, fast_bases: dict[str, FastBase]) -> None:
    ranker, state, cfg = nf4
    ref = ranker.score_pairs(PAIRS)
    err = {path: np.abs(fast_bases[path].build("v0001", state, cfg).score_pairs(PAIRS) - ref).max()
           for path in ("merged-bf16", "merged-int8")}
    assert err["merged-bf16"] < 0.01 * (ref.max() - ref.min())  # within 1% of the scores' spread
    assert err["merged-bf16"] < err["merged-int8"], err
    model = fast_bases["merged-bf16"].build("v0001", state, cfg).model
    assert model is not None
    linear = {name: m.weight.dtype for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = {n for n in linear if n.split(".")[1] in HEAD_MODULE_NAMES or ".pooler." in n}
    assert head and {linear[n] for n in head} == {torch.float32}  # the head stays fp32: scores keep their bits
    assert {d for n, d in linear.items() if n not in head} == {torch.bfloat16}  # the encoder's products in bf16
    assert {p.dtype for p in fast_bases["merged-bf16"].template.parameters()} == {torch.float32}  # untouched
    # scores are not rounded to bf16: nearly all distinct on a page of near-duplicate texts
    texts = [f"Leather hiking boot, waterproof, size {k}" for k in range(40)]
    scores = fast_bases["merged-bf16"].build("v0001", state, cfg).score_pairs([("boots", t) for t in texts])
    assert len(set(scores.tolist())) >= 38, sorted(scores.tolist())


@pytest.mark.slow
def test_fast_paths_keep_ndcg_on_the_simulator_ground_truth(nf4: Any, fast_bases: dict[str, FastBase]) -> None:
    ranker, state, cfg = nf4
    judged = judgements(n_queries=15, candidates=20)
    ref = per_query_ndcg(ranker.score_pairs, judged)
    # the defaults (merged-bf16 with native bf16, else merged-fp32) keep NDCG@10 within 0.002 of the nf4 path;
    # dynamic int8 moves this adapter's (a strong random one) by about 0.02, which is why it is not a default
    for path, tolerance in (("merged-fp32", 0.002), ("merged-bf16", 0.002), ("merged-int8", 0.05)):
        got = per_query_ndcg(fast_bases[path].build("v0001", state, cfg).score_pairs, judged)
        assert abs(got.mean() - ref.mean()) <= tolerance, (path, got.mean(), ref.mean())


def test_broken_version_is_refused_by_its_probe(nf4: Any, fast_bases: dict[str, FastBase]) -> None:
    _, state, cfg = nf4
    fb = fast_bases["merged-int8"]
    bad = {k: (torch.full_like(v, float("nan")) if "classifier" in k else v) for k, v in state.items()}
    with pytest.raises(SwapRefused, match="non-finite"):
        fb.build("v0009", bad, cfg).probe(PAIRS)
    with pytest.raises(SwapRefused, match=r"unexpected \['base_model.model.nowhere.weight'\]"):
        fb.build("v0009", {**state, "base_model.model.nowhere.weight": torch.zeros(1)}, cfg)
    # what the quantized path refuses (Ranker.add_adapter) the fast path refuses too: a merge would serve
    # the template's own values for a missing layer or head
    with pytest.raises(SwapRefused, match="missing"):
        fb.build("v0009", {k: v for k, v in state.items() if "classifier" not in k and "layer.5." not in k}, cfg)
    lora_a = next(k for k in state if k.endswith("lora_A.weight"))
    with pytest.raises(SwapRefused, match="wrong shape"):
        fb.build("v0009", {**state, lora_a: state[lora_a][:1]}, cfg)
    with pytest.raises(SwapRefused, match="trained on base"):
        fb.build("v0009", state, {**cfg, "base_model_name_or_path": "other@123"})
    with pytest.raises(SwapRefused, match="trained on the int8-quantized base; this runs it nf4"):
        fb.build("v0009", state, {**cfg, "ranktune_base_quantization": "int8"})
    # a version recorded with the base's fingerprint from before stop 26 still serves
    fb.build("v0009", state, {**cfg, "base_model_name_or_path": fb.ranker.base.legacy_id}).probe(PAIRS)


@pytest.mark.slow
def test_an_int8_ranker_that_has_scored_still_gives_the_fast_path_its_weights(load_ranker: Callable[..., Any]) -> None:
    # bitsandbytes moves an int8 layer's codes and scales off the weight at its first forward; the fast path
    # read the raw codes as weights then, and served a base whose ranking was reversed
    ranker = load_ranker("int8", fresh=True)
    want = ranker.score_pairs(PAIRS, adapter=None)  # the first forward
    spec = SPEC.model_copy(update={"quantization": "int8"})
    got = FastBase(ranker, spec, "merged-fp32", batch_size=16).build("base", {}, {}).score_pairs(PAIRS)
    assert np.abs(got - want).max() < 0.05 * (want.max() - want.min()), (got, want)
    assert list(np.argsort(got)) == list(np.argsort(want))


def test_serving_path_resolution() -> None:
    assert resolve_serving_path("auto", torch.device("cpu"), native_bf16=False) == "merged-fp32"
    assert resolve_serving_path("auto", torch.device("cpu"), native_bf16=True) == "merged-bf16"
    assert resolve_serving_path("auto", torch.device("cpu")) in {"merged-fp32", "merged-bf16"}
    assert resolve_serving_path("auto", torch.device("cuda:0"), native_bf16=True) == "quantized"
    assert resolve_serving_path("merged-fp32", torch.device("cpu")) == "merged-fp32"
    with pytest.raises(FastPathUnavailable):
        resolve_serving_path("merged-int8", torch.device("cuda:0"))
    with pytest.raises(FastPathUnavailable):
        resolve_serving_path("merged-bf16", torch.device("cuda:0"))


def test_native_bf16_is_read_from_the_cpu_capabilities() -> None:
    assert cpu_has_native_bf16({"avx512_f": True, "avx512_bf16": True})  # Zen 4, Cooper Lake
    assert cpu_has_native_bf16({"avx512_bf16": False, "amx_bf16": True})  # Sapphire Rapids
    assert not cpu_has_native_bf16({"avx512_f": True, "avx512_vnni": True, "avx512_bf16": False})  # Skylake
    assert not cpu_has_native_bf16({})
    assert cpu_has_native_bf16() == any(bool(torch.cpu.get_capabilities().get(f))
                                        for f in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


@pytest.mark.parametrize(("path", "atol"), [("merged-fp32", 1e-4), ("merged-bf16", 0.02)])
def test_scorer_on_the_fast_path_swaps_between_rounds(
    nf4: Any, fast_bases: dict[str, FastBase], load_ranker: Callable[..., Any], sqlite_engine: Engine,
    artifacts_dir: Path, path: str, atol: float,
) -> None:
    from daemon.tools.synthetic_adapters import make_version

    ranker = nf4[0]
    v1, v2 = (make_version(ranker, engine=sqlite_engine, artifacts_dir=artifacts_dir, seed=s) for s in (21, 22))
    serving = load_ranker("nf4")  # the scorer's own ranker (no adapter active)
    loaded = serving.adapter_names  # the shared ranker may hold adapters of earlier tests
    scorer = Scorer(serving, loader=registered_loader(sqlite_engine, artifacts_dir), max_batch=16, max_wait_ms=5,
                    fast=fast_bases[path])
    scorer.start()
    scorer.mark_ready()
    try:
        assert scorer.serving_path == path and scorer.version == "base"
        first = scorer.swap_to(v1)
        assert first.changed and scorer.version == v1
        res = scorer.score(PAIRS[0][0], [t for _, t in PAIRS], timeout_s=60)
        assert res.version == v1  # submitted after swap_to returned: served by the new version
        ref = f"fastpath_ref_v1_{path}"  # adapter names are never reused in one ranker
        ranker.add_adapter(ref, *synthetic_state(ranker, seed=21))  # same weights as v1
        np.testing.assert_allclose(res.scores, ranker.score(PAIRS[0][0], [t for _, t in PAIRS],
                                                            adapter=ref), atol=atol)
        scorer.swap_to(v2)
        back = scorer.swap_to(v1)  # the previous version is kept built: a rollback only switches
        assert back.changed and scorer.version == v1 and [v for _, v in scorer.transitions][-3:] == [v1, v2, v1]
        assert serving.adapter_names == loaded  # the fast path never loads adapters into the quantized ranker
    finally:
        scorer.stop()
        if f"fastpath_ref_v1_{path}" in ranker.adapter_names:
            ranker.delete_adapter(f"fastpath_ref_v1_{path}")


def test_embeddings_survive_an_eviction_by_another_thread(fast_bases: dict[str, FastBase]) -> None:
    fb = fast_bases["merged-fp32"]
    assert fb.sentence, "the default base is a sentence encoder: its cosine is cached per text"
    want = fb.embeddings(["Brass desk lamp", "Cotton summer dress"]).clone()
    embed = fb._embed

    def evicting(texts: list[str]) -> list[torch.Tensor]:  # another thread fills the cache meanwhile
        with fb._lock:
            fb._embeddings.clear()
        return embed(texts)

    fb._embed = evicting  # type: ignore[method-assign]
    try:
        got = fb.embeddings(["Brass desk lamp", "Cotton summer dress", "Leather hiking boot"])
    finally:
        fb._embed = embed  # type: ignore[method-assign]
    torch.testing.assert_close(got[:2], want)
    assert "Leather hiking boot" in fb._embeddings
