"""LangChain and LlamaIndex on a cde-rag Chroma collection use its stored context; the quickstart
example runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import chromadb
import numpy as np
import pytest

from cde_rag.chroma import (
    add_documents,
    create_collection,
    document_id,
    get_context,
    get_model,
    open_collection,
)
from cde_rag.langchain import CDEEmbeddings
from cde_rag.llama_index import CDEEmbedding

EXAMPLE = Path(__file__).parent.parent / "examples" / "chroma_quickstart.py"


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(
        str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )


@pytest.fixture
def col(client, tiny_model, golden):
    created = create_collection(client, "docs", model=tiny_model, corpus=golden["documents"])
    add_documents(
        created, golden["documents"], metadatas=[{"n": i} for i in range(len(golden["documents"]))]
    )
    return open_collection(client, "docs")


def _stored_vector(col, doc_id: str) -> np.ndarray:
    return np.asarray(col.get(ids=[doc_id], include=["embeddings"])["embeddings"][0])


def test_langchain_chroma_uses_the_stored_context(client, col, tiny_model, golden):
    from langchain_chroma import Chroma

    embeddings = CDEEmbeddings.from_chroma(col)
    assert embeddings.context == get_context(col) and embeddings.model is get_model(col)
    store = Chroma(
        client=client,
        collection_name="docs",
        embedding_function=embeddings,
        create_collection_if_not_exists=False,
    )
    for query in golden["queries"][:3]:
        found = [d.metadata["n"] for d in store.similarity_search(query, k=4)]
        direct = col.query(query_texts=[query], n_results=4, include=["metadatas"])
        assert found == [m["n"] for m in direct["metadatas"][0]]
    text = "A text LangChain adds to the same collection."
    (added,) = store.add_texts([text], ids=["from-langchain"])
    expected = tiny_model.embed_documents([text], context=get_context(col))[0]
    np.testing.assert_allclose(_stored_vector(col, added), expected, rtol=0, atol=1e-6)
    # ...and Chroma's own query (cde-rag's function) finds it like any other document.
    assert col.query(query_texts=[text], n_results=1)["ids"] == [[added]]


def test_llama_index_chroma_vector_store_uses_the_stored_context(col, tiny_model, golden):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    embed_model = CDEEmbedding.from_chroma(col)
    index = VectorStoreIndex.from_vector_store(
        ChromaVectorStore(chroma_collection=col), embed_model=embed_model
    )
    retriever = index.as_retriever(similarity_top_k=4)
    for query in golden["queries"][:3]:
        found = [hit.node.metadata["n"] for hit in retriever.retrieve(query)]
        direct = col.query(query_texts=[query], n_results=4, include=["metadatas"])
        assert found == [m["n"] for m in direct["metadatas"][0]]
    text = "A text LlamaIndex adds to the same collection."
    index.insert_nodes([TextNode(text=text, id_="from-llama-index")])
    expected = tiny_model.embed_documents([text], context=get_context(col))[0]
    np.testing.assert_allclose(_stored_vector(col, "from-llama-index"), expected, atol=1e-6)
    assert col.query(query_texts=[text], n_results=1)["ids"] == [["from-llama-index"]]
    assert document_id(golden["documents"][0]) in col.get()["ids"]


def test_quickstart_example_runs(tmp_path, tiny_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), tiny_path, str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "added 8, then added 0 and skipped 8" in lines
    assert "same ranking after reopening: True" in lines
    assert "same ranking with get_collection: True" in lines
    assert "LangChain agrees: True" in lines
    # The folder it left behind reopens here, without the corpus.
    client = chromadb.PersistentClient(
        str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    assert open_collection(client, "docs").count() == 8
