"""Fast mode agrees with exact mode, caches hit (counted), the first stage is released after a fit.

Tolerance for fast (bfloat16) vs exact (float32): cosine >= 0.999 per vector, the product
target. On the tiny checkpoint the measured minimum is about 0.99999, and on the full-size
random-weight checkpoint (`cde-rag bench`) about 0.99999 as well, so 0.999 leaves a wide margin
while still failing if any part (norms, rotary, pooling) ran in bfloat16 by mistake.
"""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cde_rag import CDEError, CDEModel
from cde_rag.cache import EmbeddingCache

FAST_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def fast_model(tiny_path):
    return CDEModel.from_pretrained(tiny_path, device="cpu", dtype="bfloat16")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_fast_mode_agrees_with_exact_mode(tiny_model, fast_model, tiny_context, golden):
    docs = fast_model.embed_documents(golden["documents"], context=tiny_context, batch_size=3)
    queries = fast_model.embed_queries(golden["queries"], context=tiny_context)
    assert docs.dtype == np.float32
    assert _cosines(docs, np.array(golden["document_embeddings"])).min() >= FAST_MIN_COSINE
    assert _cosines(queries, np.array(golden["query_embeddings"])).min() >= FAST_MIN_COSINE
    # ...but it is a different computation, not the exact path under another name.
    assert np.abs(docs - np.array(golden["document_embeddings"])).max() > 1e-6


def test_fast_mode_context_agrees_with_exact_context(fast_model, golden):
    ctx = fast_model.context(golden["minicorpus"])
    assert _cosines(ctx.embeddings, np.array(golden["dataset_embeddings"])).min() >= 0.999


def test_refitting_the_same_minicorpus_hits_the_context_cache(tiny_path, golden, monkeypatch):
    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    loads = []
    original = model._load_first_stage
    monkeypatch.setattr(model, "_load_first_stage", lambda: loads.append(1) or original())
    corpus = golden["documents"] + golden["minicorpus"]
    first = model.fit_context(corpus, seed=5)
    again = model.fit_context(corpus, seed=5)
    assert again.fingerprint == first.fingerprint and again.seed == 5
    assert model.cache_stats["context_hits"] == 1 and model.cache_stats["context_misses"] == 1
    assert len(loads) == 1  # the first stage ran once
    explicit = model.context(list(first.minicorpus))  # same texts, another way in: still a hit
    assert explicit.kind == "explicit" and explicit.fingerprint == first.fingerprint
    assert model.cache_stats["context_hits"] == 2 and len(loads) == 1
    model.fit_context(corpus, seed=6)  # other texts: computed
    assert model.cache_stats["context_misses"] == 2 and len(loads) == 2


def test_first_stage_is_released_after_a_fit(tiny_path, golden, monkeypatch):
    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    loaded = []
    original = model._load_first_stage

    def spy():
        stage = original()
        loaded.append(weakref.ref(stage))
        return stage

    monkeypatch.setattr(model, "_load_first_stage", spy)
    model.context(golden["minicorpus"])
    assert len(loaded) == 1
    assert loaded[0]() is None, "the first stage is still referenced after the fit"


def test_embedding_cache_reembeds_nothing(tiny_path, tiny_context, golden, tmp_path):
    path = tmp_path / "embeddings.sqlite"
    model = CDEModel.from_pretrained(tiny_path, device="cpu", embedding_cache=path)
    docs = golden["documents"]
    first = model.embed_documents(docs, context=tiny_context)
    assert model.cache_stats["embedding_misses"] == len(docs)
    assert model.cache_stats["embedding_hits"] == 0
    again = model.embed_documents(docs[::-1], context=tiny_context)
    np.testing.assert_array_equal(again, first[::-1])
    assert model.cache_stats["embedding_hits"] == len(docs)
    np.testing.assert_allclose(first, golden["document_embeddings"], atol=1e-4, rtol=0)

    # Persistent: another model instance on the same file finds them.
    other = CDEModel.from_pretrained(tiny_path, device="cpu")
    cache = other.use_embedding_cache(path)
    np.testing.assert_array_equal(other.embed_documents(docs, context=tiny_context), first)
    assert cache.hits == len(docs) and cache.misses == 0 and len(cache) == len(docs)

    # The same text as a query, or under another context, is another embedding.
    other.embed_queries(docs[:2], context=tiny_context)
    assert cache.misses == 2
    rng = np.random.default_rng(0)
    other_ctx = other.context_from_embeddings(rng.standard_normal(tiny_context.embeddings.shape))
    moved = other.embed_documents(docs[:2], context=other_ctx)
    assert cache.misses == 4 and np.abs(moved - first[:2]).max() > 1e-4

    other.use_embedding_cache(None)
    other.embed_documents(docs[:2], context=tiny_context)
    assert cache.hits == len(docs)  # off: not consulted
    cache.close()


def test_embedding_cache_separates_dtypes(tiny_path, fast_model, tiny_context, golden, tmp_path):
    path = tmp_path / "embeddings.sqlite"
    exact = CDEModel.from_pretrained(tiny_path, device="cpu", embedding_cache=path)
    exact.embed_documents(golden["documents"][:3], context=tiny_context)
    cache = fast_model.use_embedding_cache(path)
    try:
        fast_model.embed_documents(golden["documents"][:3], context=tiny_context)
        assert cache.misses == 3 and cache.hits == 0
    finally:
        fast_model.use_embedding_cache(None)
        cache.close()


def _counting_first_stage(model, monkeypatch) -> list[int]:
    """Rows the first stage computes, call by call (a forward pre-hook on each loaded stage)."""
    rows: list[int] = []
    original = model._load_first_stage

    def counted():
        stage = original()
        stage.register_forward_pre_hook(lambda _m, args: rows.append(len(args[1])))
        return stage

    monkeypatch.setattr(model, "_load_first_stage", counted)
    return rows


@pytest.mark.parametrize("distinct", [1, 5, 20])  # the tiny model's N is 32
def test_a_small_corpus_is_fitted_once_per_distinct_text(tiny_path, golden, monkeypatch, distinct):
    """Fewer than N texts are sampled with replacement; the first stage still runs once per
    distinct text, and the context equals embedding every one of the N entries."""
    from cde_rag.tokenization import DOCUMENT_PREFIX, length_sorted_batches

    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    rows = _counting_first_stage(model, monkeypatch)
    words = " ".join(golden["documents"]).split()
    corpus = [f"chunk {i}: {' '.join(words[i % 7 : i % 7 + 3 + i % 11])}" for i in range(distinct)]
    ctx = model.fit_context(corpus, seed=7)
    sampled = set(ctx.minicorpus)
    assert len(ctx.minicorpus) == model.corpus_size > len(sampled)
    assert sum(rows) == len(sampled)

    # The reference: the first stage on every one of the N sampled entries, duplicates included.
    stage = model._load_first_stage()
    token_ids = model.encoder.encode(list(ctx.minicorpus), DOCUMENT_PREFIX)
    reference = np.zeros_like(ctx.embeddings)
    with torch.inference_mode():
        for batch in length_sorted_batches(token_ids, 8):
            reference[batch.indices] = stage(batch.input_ids, batch.lengths).numpy()
    assert sum(rows) == len(sampled) + model.corpus_size
    np.testing.assert_allclose(ctx.embeddings, reference, atol=1e-4, rtol=0)


def test_a_corpus_of_n_distinct_texts_runs_the_first_stage_n_times(tiny_path, monkeypatch):
    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    rows = _counting_first_stage(model, monkeypatch)
    corpus = [f"document number {i} of a larger corpus" for i in range(3 * model.corpus_size)]
    ctx = model.fit_context(corpus)
    assert len(set(ctx.minicorpus)) == model.corpus_size == sum(rows)


def test_repeated_texts_in_one_call_are_computed_once(tiny_path, tiny_context, monkeypatch):
    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    seen = []
    original = model._second_stage_embeddings

    def spy(token_ids, *args):
        seen.append(len(token_ids))
        return original(token_ids, *args)

    monkeypatch.setattr(model, "_second_stage_embeddings", spy)
    out = model.embed_documents(["a b", "c d", "a b", "a b"], context=tiny_context)
    assert seen == [2]
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[3])


def test_cache_is_safe_across_threads(tiny_path, tiny_context, golden, tmp_path):
    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    texts = golden["documents"] + golden["queries"]
    expected = model.embed_documents(texts, context=tiny_context)
    model.use_embedding_cache(tmp_path / "shared.sqlite")
    # Overlapping slices from several threads at once: every answer must be the right one.
    slices = [texts[i : i + 5] for i in range(0, len(texts), 2)] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda part: model.embed_documents(part, context=tiny_context), slices)
        )
    for part, got in zip(slices, results, strict=True):
        want = expected[[texts.index(t) for t in part]]
        np.testing.assert_allclose(got, want, atol=1e-6)
    stats = model.cache_stats
    assert stats["embedding_hits"] > 0
    assert stats["embedding_hits"] + stats["embedding_misses"] == sum(map(len, slices))
    assert len(model.embedding_cache) == len(set(texts))


WRITER = """
import sys, numpy as np
from cde_rag.cache import EmbeddingCache
cache = EmbeddingCache(sys.argv[1])
for round in range(20):
    keys = [cache.key(sys.argv[2], "document", f"text {round} {i}") for i in range(25)]
    cache.put_many((k, np.full(8, float(round), np.float32)) for k in keys)
    assert len(cache.get_many(keys, 8)) == 25
print(len(cache))
"""


def test_cache_is_safe_across_processes(tmp_path):
    path = tmp_path / "multi.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two", "three")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    cache = EmbeddingCache(path)
    assert len(cache) == 3 * 20 * 25
    key = cache.key("two", "document", "text 7 3")
    np.testing.assert_array_equal(cache.get_many([key], 8)[key], np.full(8, 7.0, np.float32))
    assert cache.get_many([key], 16) == {}  # another width is not this vector
    cache.close()


def test_unusable_cache_paths_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(CDEError, match="embedding cache"):
        tiny_model.use_embedding_cache(tmp_path)  # a directory
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database " * 100)
    with pytest.raises(CDEError, match="None to turn the cache off"):
        EmbeddingCache(not_sqlite)
    with pytest.raises(CDEError, match="Not a directory"):  # a folder that cannot be made
        EmbeddingCache(not_sqlite / "sub" / "cache.sqlite")
    assert tiny_model.embedding_cache is None
    meta = json.dumps(tiny_model.cache_stats)
    assert "embedding_hits" in meta


def test_the_soft_prompt_is_projected_once_not_per_query(tiny_path, tiny_context, golden):
    """It projects a constant: per query it would re-read prompt_projection's weights."""
    model = CDEModel.from_pretrained(tiny_path, device="cpu")
    calls = []
    model.second_stage.prompt_projection.register_forward_hook(lambda *_: calls.append(1))
    for query in golden["queries"][:3]:
        out = model.embed_queries([query], context=tiny_context)
        np.testing.assert_allclose(
            out[0], golden["query_embeddings"][golden["queries"].index(query)], atol=1e-4
        )
    assert len(calls) == 1
