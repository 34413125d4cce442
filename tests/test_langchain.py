"""LangChain adapter: real vector stores, vectors equal to the engine's, explicit fitting only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from cde_rag import CorpusContext
from cde_rag.errors import ContextMismatchError, InputError, NotFittedError
from cde_rag.langchain import CDEEmbeddings, StaleVectorsWarning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(golden) -> list[str]:
    return golden["documents"] + golden["minicorpus"][:9]


@pytest.fixture(scope="module")
def fitted(tiny_model, corpus) -> CDEEmbeddings:
    return CDEEmbeddings(model=tiny_model, corpus=corpus)


def engine_docs(model, texts, context):
    return model.embed_documents(texts, context=context)


def test_fit_at_construction_matches_engine(tiny_model, corpus, fitted):
    assert fitted.is_fitted
    expected_ctx = tiny_model.fit_context(corpus, seed=42)
    assert fitted.context == expected_ctx
    assert fitted.context_fingerprint == expected_ctx.fingerprint
    assert fitted.context.source_size == len(corpus)
    got = np.array(fitted.embed_documents(corpus[:5]), dtype=np.float32)
    np.testing.assert_array_equal(got, engine_docs(tiny_model, corpus[:5], expected_ctx))
    query = np.array(fitted.embed_query("Which river?"), dtype=np.float32)
    np.testing.assert_array_equal(
        query, tiny_model.embed_queries(["Which river?"], context=expected_ctx)[0]
    )


def test_documents_and_seed(tiny_model, corpus):
    emb = CDEEmbeddings(model=tiny_model)
    as_docs = emb.fit([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(corpus)])
    assert as_docs is emb
    assert emb.context == tiny_model.fit_context(corpus, seed=42)
    emb.fit(corpus, seed=7)
    assert emb.context == tiny_model.fit_context(corpus, seed=7)
    assert emb.context.seed == 7


def test_golden_context_gives_golden_vectors(tiny_model, tiny_context, golden):
    emb = CDEEmbeddings(model=tiny_model, context=tiny_context)
    docs = np.array(emb.embed_documents(golden["documents"]), dtype=np.float32)
    np.testing.assert_allclose(docs, golden["document_embeddings"], atol=1e-5)
    queries = np.array([emb.embed_query(q) for q in golden["queries"]], dtype=np.float32)
    np.testing.assert_allclose(queries, golden["query_embeddings"], atol=1e-5)


def test_in_memory_vector_store_retriever(tiny_model, corpus, fitted):
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(corpus)]
    store = InMemoryVectorStore.from_documents(docs, fitted)
    stored = {rec["metadata"]["i"]: rec["vector"] for rec in store.store.values()}
    np.testing.assert_array_equal(
        np.array([stored[i] for i in range(len(corpus))], dtype=np.float32),
        engine_docs(tiny_model, corpus, fitted.context),
    )
    query = "Bank protein corpus then one over other water."
    hits = store.as_retriever(search_kwargs={"k": 3}).invoke(query)
    q = tiny_model.embed_queries([query], context=fitted.context)[0]
    expected = np.argsort(-(engine_docs(tiny_model, corpus, fitted.context) @ q))[:3]
    assert [h.metadata["i"] for h in hits] == list(expected)


@pytest.mark.parametrize("persistent", [False, True])
def test_chroma_from_documents(tiny_model, corpus, fitted, tmp_path, persistent):
    import chromadb
    from langchain_chroma import Chroma

    client = (
        chromadb.PersistentClient(path=str(tmp_path / "db"))
        if persistent
        else chromadb.EphemeralClient()
    )
    name = f"lc_{'p' if persistent else 'e'}_{os.getpid()}"
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(corpus)]
    try:
        store = Chroma.from_documents(docs, fitted, client=client, collection_name=name)
        got = store.get(include=["embeddings", "metadatas"])
        order = np.argsort([m["i"] for m in got["metadatas"]])
        np.testing.assert_allclose(
            np.asarray(got["embeddings"], dtype=np.float32)[order],
            engine_docs(tiny_model, corpus, fitted.context),
            atol=1e-6,
        )
        hits = store.similarity_search(corpus[3], k=1)
        q = tiny_model.embed_queries([corpus[3]], context=fitted.context)[0]
        best = int(np.argmax(engine_docs(tiny_model, corpus, fitted.context) @ q))
        assert hits[0].metadata["i"] == best
    finally:
        client.delete_collection(name)


def test_unfitted_refuses_everywhere_and_stores_nothing(tiny_model, corpus):
    import chromadb
    from langchain_chroma import Chroma

    emb = CDEEmbeddings(model=tiny_model)
    assert not emb.is_fitted and emb.context is None and emb.context_fingerprint is None
    for call in (lambda: emb.embed_documents(corpus), lambda: emb.embed_query("q")):
        with pytest.raises(NotFittedError) as err:
            call()
        message = str(err.value)
        for remedy in ("corpus=", ".fit(corpus)", "context=", ".use_fallback_context()"):
            assert remedy in message
    with pytest.raises(NotFittedError):
        asyncio.run(emb.aembed_query("q"))
    with pytest.raises(NotFittedError):
        InMemoryVectorStore.from_texts(corpus, emb)
    client = chromadb.EphemeralClient()
    name = f"lc_unfitted_{os.getpid()}"
    store = Chroma(collection_name=name, embedding_function=emb, client=client)
    try:
        with pytest.raises(NotFittedError):
            store.add_texts(corpus)
        assert store.get()["ids"] == []
        assert not emb.is_fitted  # nothing fitted lazily on the slice
    finally:
        client.delete_collection(name)


def test_context_from_saved_path_and_fallback(tiny_model, corpus, fitted, tmp_path):
    path = fitted.save_context(tmp_path / "ctx.safetensors")
    loaded = CDEEmbeddings(model=tiny_model, context=str(path))
    assert loaded.context == fitted.context
    assert loaded.embed_documents(corpus[:2]) == fitted.embed_documents(corpus[:2])
    assert CDEEmbeddings(model=tiny_model, context=CorpusContext.load(path)).context == (
        fitted.context
    )
    fallback = CDEEmbeddings(model=tiny_model, fallback=True)
    assert fallback.context.kind == "fallback"
    assert fallback.context == tiny_model.fallback_context()
    assert CDEEmbeddings(model=tiny_model).use_fallback_context().context == fallback.context
    with pytest.raises(ValueError, match="only one of"):
        CDEEmbeddings(model=tiny_model, corpus=corpus, fallback=True)


def test_context_of_another_model_is_refused(tiny_model, make_checkpoint, corpus):
    other = make_checkpoint("other", config={"seed_note": 1})
    other_ctx = CDEEmbeddings(model=str(other), device="cpu", corpus=corpus).context
    with pytest.raises(ContextMismatchError):
        CDEEmbeddings(model=tiny_model, context=other_ctx)


def test_refit_after_embedding_warns(tiny_model, corpus):
    emb = CDEEmbeddings(model=tiny_model, corpus=corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb.fit(corpus, seed=1)  # nothing embedded yet: no warning
        emb.embed_query("q")  # queries are not stored: still no warning
        emb.fit(corpus, seed=2)
        emb.embed_documents(corpus[:2])
        emb.set_context(emb.context)  # same context again: vectors still valid
    with pytest.warns(StaleVectorsWarning, match="stale") as caught:
        emb.fit(corpus, seed=3)
    assert caught[0].filename == __file__  # points at the caller's line
    emb.embed_documents(corpus[:1])
    with pytest.warns(StaleVectorsWarning) as caught:
        emb.set_context(CDEEmbeddings(model=tiny_model, fallback=True).context)
    assert caught[0].filename == __file__


def test_langchain_index_in_small_batches_uses_the_whole_corpus_context(tiny_model, corpus):
    from langchain_core.indexing import InMemoryRecordManager, index

    emb = CDEEmbeddings(model=tiny_model, corpus=corpus)
    store = InMemoryVectorStore(emb)
    manager = InMemoryRecordManager(namespace="test")
    manager.create_schema()
    docs = [
        Document(page_content=t, metadata={"i": i, "source": "s"}) for i, t in enumerate(corpus)
    ]
    result = index(docs, manager, store, batch_size=4, key_encoder="sha256")
    assert result["num_added"] == len(corpus)
    stored = {rec["metadata"]["i"]: rec["vector"] for rec in store.store.values()}
    np.testing.assert_allclose(
        np.array([stored[i] for i in range(len(corpus))], dtype=np.float32),
        engine_docs(tiny_model, corpus, emb.context),
        atol=1e-6,
    )
    assert emb.context.source_size == len(corpus)  # not refitted on a batch of 4


def test_shared_and_loaded_models(tiny_model, tiny_path):
    a = CDEEmbeddings(model=tiny_path, device="cpu")
    b = CDEEmbeddings(model_name=tiny_path, model_kwargs={"device": "cpu"})
    assert a.model is b.model  # one copy of the weights per process
    assert CDEEmbeddings(model=tiny_model).model is tiny_model
    assert CDEEmbeddings(model=tiny_model).model_name == tiny_model.name
    with pytest.raises(ValueError, match="does not take"):
        CDEEmbeddings(model=tiny_model, model_kwargs={"trust_remote_code": True})
    with pytest.raises(ValueError, match="does not take"):
        CDEEmbeddings(model=tiny_model, encode_kwargs={"normalize_embeddings": False})
    with pytest.raises(ValueError, match="fixed to"):
        CDEEmbeddings(model=tiny_model, query_prefix="query: ")
    with pytest.raises(ValueError, match="dtype"):
        CDEEmbeddings(model=tiny_model, dtype="bfloat16")


def test_encode_kwargs_batch_size_gives_same_vectors(tiny_model, corpus, fitted):
    small = CDEEmbeddings(model=tiny_model, context=fitted.context, encode_kwargs={"batch_size": 3})
    np.testing.assert_allclose(
        small.embed_documents(corpus), fitted.embed_documents(corpus), atol=1e-5
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda e: e.embed_documents(None), "None"),
        (lambda e: e.embed_documents("one text"), "wrap it"),
        (lambda e: e.embed_documents(["ok", 3]), r"texts\[1\] is int"),
        (lambda e: e.embed_query(None), "query must be a str"),
        (lambda e: e.embed_query(""), "empty"),
        (lambda e: e.fit(None), "not None"),
        (lambda e: e.fit("one long text"), "not one str"),
        (lambda e: e.fit([]), "empty corpus"),
        (lambda e: e.fit(["", " \n"]), "no text to fit on"),
        (lambda e: e.fit([Document(page_content="x"), None]), r"corpus\[1\] is NoneType"),
    ],
)
def test_hostile_inputs_are_clear_errors(fitted, call, match):
    before = fitted.context
    with pytest.raises((InputError, ValueError), match=match):
        call(fitted)
    assert fitted.context is before  # a failed fit keeps the old context


def test_async_from_many_tasks(tiny_model, corpus, fitted):
    queries = [f"{corpus[i][:30]} ?" for i in range(8)]

    async def main():
        batch = asyncio.create_task(fitted.aembed_documents(corpus * 4))
        ticks = 0
        while not batch.done():  # the loop keeps running while the batch embeds
            ticks += 1
            await asyncio.sleep(0)
        docs = await batch
        singles = await asyncio.gather(*(fitted.aembed_query(q) for q in queries))
        slices = await asyncio.gather(
            *(fitted.aembed_documents(corpus[i : i + 5]) for i in range(0, len(corpus), 5))
        )
        return ticks, docs, singles, slices

    ticks, docs, singles, slices = asyncio.run(main())
    assert ticks > 1
    expected = engine_docs(tiny_model, corpus, fitted.context)
    np.testing.assert_allclose(np.array(docs[: len(corpus)]), expected, atol=1e-5)
    np.testing.assert_allclose(
        np.array(singles), tiny_model.embed_queries(queries, context=fitted.context), atol=1e-5
    )
    np.testing.assert_allclose(np.concatenate(slices), expected, atol=1e-5)


def test_import_error_names_the_extra():
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import cde_rag.langchain\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "cde-rag[langchain]"' in out.stdout


def test_example_runs(tiny_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "langchain_rag.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CDE_RAG_MODEL": tiny_path},  # the model named by the environment
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("context: ") and "fitted" in line for line in lines)
    assert sum(line.startswith("hit: ") for line in lines) == 2


def test_engine_cache_through_the_adapter_follows_the_context(tiny_path, corpus, tmp_path):
    from cde_rag import CDEModel

    model = CDEModel.from_pretrained(tiny_path, device="cpu")  # private: the cache is per model
    model.use_embedding_cache(tmp_path / "embeddings.sqlite")
    emb = CDEEmbeddings(model=model, corpus=corpus)
    first = emb.embed_documents(corpus[:4])
    assert emb.embed_documents(corpus[:4]) == first
    assert model.cache_stats["embedding_hits"] == 4
    with pytest.warns(StaleVectorsWarning):
        emb.fit(corpus, seed=3)
    again = np.array(emb.embed_documents(corpus[:4]), dtype=np.float32)
    assert not np.allclose(again, first)  # not the old context's vectors from the cache
    np.testing.assert_array_equal(
        again,
        CDEModel.from_pretrained(tiny_path, device="cpu").embed_documents(
            corpus[:4], context=emb.context
        ),
    )
