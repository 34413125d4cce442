"""`CachedEmbedder`: a run's embedding cache wraps the model instead of being set on it, so
another user of the same process-wide model, during the run, neither writes into the run's
cache nor loses its own."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from cde_rag import EmbeddingCache, shared_model
from cde_rag.cached import CachedEmbedder
from cde_rag.evaluation import evaluate

TEXTS = ["rivers flood in spring", "a bank lends money", "rivers flood in spring", "boats"]


def test_wrapper_computes_each_missing_text_once_and_matches_the_model(
    tiny_model, tiny_context, tmp_path
):
    calls: list[list[str]] = []

    class Counting:  # the real model, with its calls recorded
        dtype, dim = tiny_model.dtype, tiny_model.dim
        check_context = staticmethod(tiny_model.check_context)

        def embed_documents(self, texts, **kwargs):
            calls.append(list(texts))
            return tiny_model.embed_documents(texts, **kwargs)

        def embed_queries(self, texts, **kwargs):
            calls.append(list(texts))
            return tiny_model.embed_queries(texts, **kwargs)

    with CachedEmbedder(Counting(), tmp_path / "cache.sqlite") as cached:
        first = cached.embed_documents(TEXTS, context=tiny_context)
        assert calls == [["rivers flood in spring", "a bank lends money", "boats"]]
        again = cached.embed_documents([*TEXTS, "new text"], context=tiny_context)
        assert calls[1:] == [["new text"]]
        queries = cached.embed_queries(TEXTS[:1], context=tiny_context)
        assert calls[2:] == [TEXTS[:1]]  # a query is another key than the same document
    expected = tiny_model.embed_documents(TEXTS, context=tiny_context)
    np.testing.assert_allclose(first, expected, atol=1e-6)
    np.testing.assert_allclose(again[:4], expected, atol=1e-6)
    np.testing.assert_allclose(
        queries, tiny_model.embed_queries(TEXTS[:1], context=tiny_context), atol=1e-6
    )
    assert tiny_model.embedding_cache is None


def test_same_keys_as_the_models_own_cache(tiny_path, tiny_context, tmp_path):
    """A file filled by the model's own cache serves the wrapper, and the other way round."""
    from cde_rag import CDEModel

    path = tmp_path / "shared.sqlite"
    model = CDEModel.from_pretrained(tiny_path, device="cpu", embedding_cache=path)
    model.embed_documents(TEXTS[:2], context=tiny_context)
    model.use_embedding_cache(None)
    with CachedEmbedder(model, path) as cached:
        cached.embed_documents(TEXTS[:2], context=tiny_context)
        assert cached.cache.stats == {"hits": 2, "misses": 0}
        cached.embed_documents(TEXTS[2:], context=tiny_context)
    model.use_embedding_cache(path)
    model.embed_documents(TEXTS[2:], context=tiny_context)
    assert model.cache_stats["embedding_hits"] == 2 and model.cache_stats["embedding_misses"] == 0
    model.use_embedding_cache(None)


def test_float32_and_bfloat16_fits_of_one_recipe_never_share_cached_vectors(
    tiny_path, tiny_model, golden, tmp_path
):
    """The two fits share a fingerprint (the recipe) but not their numbers, so not vectors."""
    from cde_rag import CDEModel

    exact = tiny_model.context(golden["minicorpus"])
    fast = CDEModel.from_pretrained(tiny_path, device="cpu", dtype="bfloat16").context(
        golden["minicorpus"]
    )
    assert fast.fingerprint == exact.fingerprint and fast.checksum != exact.checksum
    texts = golden["documents"][:4]
    with CachedEmbedder(tiny_model, tmp_path / "cache.sqlite") as cached:
        first = cached.embed_documents(texts, context=exact)
        second = cached.embed_documents(texts, context=fast)
        assert cached.cache.stats == {"hits": 0, "misses": 8}
        again = cached.embed_documents(texts, context=fast)
        assert cached.cache.stats == {"hits": 4, "misses": 8}
    np.testing.assert_array_equal(second, tiny_model.embed_documents(texts, context=fast))
    np.testing.assert_array_equal(again, second)
    assert not np.allclose(first, second, atol=1e-6)


class ModelUser(Embeddings):
    """Another user of the same shared model, called in the middle of an evaluation run (as a
    baseline, so deterministically at that moment): records the model's cache it sees."""

    def __init__(self, model, context):
        self.model, self.context, self.seen = model, context, []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.seen.append(self.model.embedding_cache)
        return self.model.embed_documents(texts, context=self.context).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "text": f"document {i} about topic {i % 3}"} for i in range(9)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text('{"_id": "q", "text": "topic 1"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td1\t1\n")
    return folder


def test_another_user_of_the_shared_model_sees_no_cache_change(
    tiny_path, tiny_context, beir, tmp_path
):
    model = shared_model(tiny_path, device="cpu")
    own = model.use_embedding_cache(tmp_path / "own.sqlite")  # the other user's own cache
    try:
        user = ModelUser(model, tiny_context)
        stats_before = own.stats
        report = evaluate(
            model, beir, seeds=[1], fallback=False, baselines={"user": user}, cache_dir=tmp_path
        )
        assert user.seen and all(cache is own for cache in user.seen)
        assert model.embedding_cache is own
        # The user's vectors went to its own cache, none to the run's.
        assert own.stats["misses"] > stats_before["misses"]
        run_cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
        namespace = f"{tiny_context.checksum}/float32"  # the model's own key (test above)
        user_keys = [run_cache.key(namespace, "document", "document 0 about topic 0")]
        assert run_cache.get_many(user_keys, model.dim) == {}
        assert len(run_cache) == 9 + 1  # the run's own documents and query, fitted context
        assert report.result("fitted (seed 1)").documents_embedded == 9
    finally:
        model.use_embedding_cache(None)
        own.close()


def test_a_thread_using_the_shared_model_during_a_run_keeps_no_cache(
    tiny_path, tiny_context, beir, tmp_path
):
    model = shared_model(tiny_path, device="cpu")
    assert model.embedding_cache is None
    stop, seen = threading.Event(), set()

    def other_user():
        while not stop.is_set():
            seen.add(model.embedding_cache)
            model.embed_queries(["a question from elsewhere"], context=tiny_context)

    thread = threading.Thread(target=other_user)
    thread.start()
    try:
        evaluate(model, beir, seeds=[1, 2], cache_dir=tmp_path)
    finally:
        stop.set()
        thread.join()
    assert seen == {None}
    namespace = f"{tiny_context.checksum}/float32"
    run_cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    key = run_cache.key(namespace, "query", "a question from elsewhere")
    assert run_cache.get_many([key], model.dim) == {}
