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
