"""8 threads embedding and querying against one model and one collection (issue 8).

Every thread must get exactly what a single thread gets: the same vectors, the same ranked ids
and distances, and adds that store nothing twice.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import chromadb
import numpy as np
import pytest

from cde_rag.chroma import add_documents, create_collection, open_collection

THREADS = 8


@pytest.fixture
def collection(tmp_path, tiny_model, golden):
    client = chromadb.PersistentClient(
        str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    corpus = golden["documents"] + golden["minicorpus"]
    col = create_collection(client, "docs", model=tiny_model, corpus=corpus)
    add_documents(col, corpus)
    yield client, col, corpus
    client.close()


def test_eight_threads_match_one_thread(collection, tiny_model, golden):
    client, col, corpus = collection
    ctx = tiny_model.fit_context(corpus)
    queries = golden["queries"]
    # Single-threaded answers first.
    want_docs = tiny_model.embed_documents(corpus, context=ctx)
    want_queries = tiny_model.embed_queries(queries, context=ctx)
    want_hits = col.query(query_texts=queries, n_results=5)
    stored_before = col.count()
    start = threading.Barrier(THREADS)

    def work(i: int):
        start.wait()  # all threads hit the model and the collection at once
        handle = col if i % 2 else open_collection(client, "docs")
        rotated = corpus[i:] + corpus[:i]
        docs = np.roll(tiny_model.embed_documents(rotated, context=ctx, batch_size=3), i, axis=0)
        hits = handle.query(query_texts=queries, n_results=5)
        readd = add_documents(handle, corpus[i::THREADS])
        return docs, tiny_model.embed_queries(queries, context=ctx), hits, readd

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(work, range(THREADS)))

    for docs, qs, hits, readd in results:
        np.testing.assert_allclose(docs, want_docs, atol=1e-5)
        np.testing.assert_allclose(qs, want_queries, atol=1e-5)
        assert hits["ids"] == want_hits["ids"]
        np.testing.assert_allclose(hits["distances"], want_hits["distances"], atol=1e-5)
        assert readd.added == 0  # everything was stored already
    assert col.count() == stored_before


def test_an_index_run_with_a_cache_leaves_other_users_of_the_model_alone(
    tmp_path, tiny_path, tiny_context
):
    """Issue 16 item 5: the run's embedding cache wraps the shared model; a thread using the
    model meanwhile keeps its own cache and writes nothing into the run's."""
    from cde_rag import CDEModel
    from cde_rag.cache import EmbeddingCache
    from cde_rag.ingest import index_paths

    model = CDEModel.from_pretrained(tiny_path, device="cpu")  # shared by this "process"
    own = model.use_embedding_cache(tmp_path / "own.sqlite")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"note{i}.txt").write_text(f"Note {i} about the river bank and its boats. " * 12)
    questions = [f"a question from elsewhere {i}" for i in range(3)]
    seen = []

    def other_user() -> None:
        seen.append(model.embedding_cache)
        model.embed_queries(questions, context=tiny_context)

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "store" and 0 < done < total:  # between two stored batches of the run
            thread = threading.Thread(target=other_user)
            thread.start()
            thread.join()

    client = chromadb.PersistentClient(
        str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    report = index_paths(
        [docs],
        client=client,
        collection="cached",
        model=model,
        embedding_cache=tmp_path / "run.sqlite",
        batch_size=4,
        chunk_size=200,
        chunk_overlap=20,
        progress=progress,
    )
    assert seen and all(cache is own for cache in seen)
    assert model.embedding_cache is own
    run = EmbeddingCache(tmp_path / "run.sqlite")
    assert len(run) == report.added > 4  # the run's chunks, and nothing of the other user's
    run.close()
    namespace = f"{tiny_context.checksum}/float32"  # the model's own cache keys
    keys = [own.key(namespace, "query", q) for q in questions]
    assert len(own.get_many(keys, model.dim)) == len(questions)
    own.close()
