"""An empty chunk or document never aborts a framework ingestion.

Where the framework lets a step drop a chunk (LlamaIndex's transformations), the adapters drop
it with a warning. Where the framework needs one vector per text (LangChain's
`embed_documents`, LlamaIndex's batch embedding), an empty text gets what the model gives it,
the document prefix alone, with a warning. A context is never fitted on empty texts. An empty
query is still refused."""

from __future__ import annotations

import warnings

import chromadb
import numpy as np
import pytest
from langchain_core.documents import Document as LCDocument
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode, TextNode
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.vector_stores import SimpleVectorStore

from cde_rag.errors import InputError
from cde_rag.langchain import CDEEmbeddings, EmptyTextWarning
from cde_rag.llama_index import CDEContextFit, CDEEmbedding

SPLITTER = {"chunk_size": 64, "chunk_overlap": 0}
EMPTY = ["", "   \n\t "]


@pytest.fixture(scope="module")
def texts(golden) -> list[str]:
    return golden["documents"][:6]


@pytest.fixture(scope="module")
def context(tiny_model, texts):
    return tiny_model.fit_context(texts)


def alone(model, context, text: str) -> np.ndarray:
    """What the model gives a document embedded on its own (for "", the prefix's vector)."""
    return model.embed_documents([text], context=context)[0]


# -- LangChain ------------------------------------------------------------------------------


def test_langchain_from_documents_with_empty_page_content(tiny_model, texts, context):
    embeddings = CDEEmbeddings(model=tiny_model, context=context)
    docs = [LCDocument(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)]
    docs[2:2] = [LCDocument(page_content=t, metadata={"i": -1}) for t in EMPTY]
    with pytest.warns(EmptyTextWarning, match=r"2 of 8 texts .*positions \[2, 3\]") as caught:
        store = InMemoryVectorStore.from_documents(docs, embeddings)
    assert "match unrelated queries" in str(caught[0].message)
    assert "page_content.strip()" in str(caught[0].message)  # how to drop them
    records = list(store.store.values())
    assert len(records) == len(docs)  # one vector per text, as LangChain requires
    kept = sorted((r for r in records if r["metadata"]["i"] >= 0), key=lambda r: r["metadata"]["i"])
    np.testing.assert_allclose(  # the other documents are unaffected
        [r["vector"] for r in kept], tiny_model.embed_documents(texts, context=context), atol=1e-6
    )
    for record in (r for r in records if r["metadata"]["i"] < 0):
        expected = alone(tiny_model, context, record["text"])
        np.testing.assert_allclose(record["vector"], expected, atol=1e-6)


def test_langchain_chroma_add_documents_with_an_empty_one(tiny_model, texts, context):
    from langchain_chroma import Chroma

    embeddings = CDEEmbeddings(model=tiny_model, context=context)
    client = chromadb.EphemeralClient()
    store = Chroma(
        collection_name="empty_lc",
        embedding_function=embeddings,
        client=client,
        collection_metadata={"hnsw:space": "cosine"},
    )
    try:
        store.add_documents([LCDocument(page_content=t) for t in texts[:3]])
        with pytest.warns(EmptyTextWarning):
            store.add_documents([LCDocument(page_content=texts[3]), LCDocument(page_content="")])
        assert len(store.get()["ids"]) == 5  # the whole batch was stored
        hit = store.similarity_search(texts[3], k=1)[0]
        assert hit.page_content == texts[3]
    finally:
        client.delete_collection("empty_lc")


def test_langchain_fit_leaves_empty_texts_out_of_the_context(tiny_model, texts, context):
    corpus = [LCDocument(page_content=t) for t in [*texts[:3], "", *texts[3:], " "]]
    with pytest.warns(EmptyTextWarning, match=r"2 of 8 .*left out of the context"):
        embeddings = CDEEmbeddings(model=tiny_model, corpus=corpus)
    assert embeddings.context == context  # as if they were never there
    with pytest.warns(EmptyTextWarning, match="1 of 7") as caught:
        embeddings.fit([*texts, ""])
    assert caught[0].filename == __file__  # points at the caller's fit()
    assert embeddings.context == context
    with pytest.raises(InputError, match="no text to fit on"):
        embeddings.fit(["", "  "])
    assert embeddings.context == context  # a failed fit keeps the context


def test_empty_queries_and_non_strings_are_still_refused(tiny_model, context):
    langchain = CDEEmbeddings(model=tiny_model, context=context)
    llama = CDEEmbedding(model=tiny_model, context=context)
    for call in (
        lambda: langchain.embed_query(""),
        lambda: llama.get_query_embedding("  "),
    ):
        with pytest.raises(InputError, match="query is empty"):
            call()
    with pytest.raises(InputError, match=r"texts\[1\] is NoneType"):
        langchain.embed_documents(["fine", None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text with content is not warned about
        langchain.embed_documents(["fine"])
        llama.get_text_embedding_batch(["fine"])


# -- LlamaIndex -----------------------------------------------------------------------------


def llama_documents(texts) -> list[Document]:
    docs = [Document(text=t, id_=f"doc-{i}") for i, t in enumerate(texts)]
    docs.insert(2, Document(text="", id_="empty-a"))
    docs.insert(4, Document(text="", id_="empty-b"))
    return docs


def stored_texts(index: VectorStoreIndex) -> list[str]:
    nodes = index.docstore.get_nodes(list(index.index_struct.nodes_dict.values()))
    return [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def test_llama_index_from_documents_with_an_empty_document(tiny_model, texts):
    embed_model = CDEEmbedding(model=tiny_model)
    with pytest.warns(EmptyTextWarning, match=r"CDEContextFit dropped 2 of \d+ chunks") as caught:
        index = VectorStoreIndex.from_documents(
            llama_documents(texts),
            embed_model=embed_model,
            transformations=[SentenceSplitter(**SPLITTER), CDEContextFit(embed_model)],
        )
    assert "['empty-a', 'empty-b']" in str(caught[0].message)  # which documents
    chunks = SentenceSplitter(**SPLITTER).get_nodes_from_documents(
        [Document(text=t) for t in texts]
    )
    assert embed_model.context == tiny_model.fit_context([c.text for c in chunks])
    assert sorted(stored_texts(index)) == sorted(c.text for c in chunks)
    # With a model fitted beforehand and no cde-rag step, LlamaIndex skips empty chunks itself.
    fitted = CDEEmbedding(model=tiny_model, context=embed_model.context)
    index = VectorStoreIndex.from_documents(
        llama_documents(texts), embed_model=fitted, transformations=[SentenceSplitter()]
    )
    assert sorted(stored_texts(index)) == sorted(texts)


def test_llama_index_nodes_given_directly_get_the_prefix_vector(tiny_model, texts, context):
    """Nodes inserted without a pipeline reach the batch embedding, which must return one
    vector per text: a blank one gets what the model gives it, with a warning."""
    embed_model = CDEEmbedding(model=tiny_model, context=context)
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(texts[:3])]
    nodes.append(TextNode(text="  ", id_="blank"))
    with pytest.warns(EmptyTextWarning, match=r"1 of 4 texts .*positions \[3\]"):
        index = VectorStoreIndex(nodes, embed_model=embed_model)
    vectors = index.vector_store.data.embedding_dict
    np.testing.assert_allclose(vectors["blank"], alone(tiny_model, context, "  "), atol=1e-6)
    with pytest.warns(EmptyTextWarning, match=r"1 of 1 texts"):
        single = embed_model.get_text_embedding("")
    np.testing.assert_allclose(single, alone(tiny_model, context, ""), atol=1e-6)
    np.testing.assert_allclose(
        [vectors[f"n{i}"] for i in range(3)],
        tiny_model.embed_documents(texts[:3], context=context),
        atol=1e-6,
    )


@pytest.mark.parametrize("step", ["CDEContextFit", "CDEEmbedding"])
def test_ingestion_pipeline_with_an_empty_document(tiny_model, texts, context, step):
    """The first cde-rag step of the pipeline drops empty chunks: the context fit if there is
    one, else the embedding step."""
    embed_model = CDEEmbedding(
        model=tiny_model, context=None if step == "CDEContextFit" else context
    )
    steps = [SentenceSplitter(**SPLITTER), embed_model]
    if step == "CDEContextFit":
        steps.insert(1, CDEContextFit(embed_model))
    vector_store = SimpleVectorStore()
    pipeline = IngestionPipeline(
        transformations=steps,
        docstore=SimpleDocumentStore(),
        vector_store=vector_store,
        docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
    )
    with pytest.warns(EmptyTextWarning, match=f"{step} dropped 2 of") as caught:
        nodes = pipeline.run(documents=llama_documents(texts))
    assert len(caught) == 1  # one warning, from the step that dropped them
    embedded = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert all(text.strip() for text in embedded)
    assert sorted(set(vector_store.data.text_id_to_ref_doc_id.values())) == sorted(
        f"doc-{i}" for i in range(len(texts))
    )
    assert len(vector_store.data.embedding_dict) == len(nodes)
    np.testing.assert_allclose(
        [vector_store.data.embedding_dict[n.node_id] for n in nodes],
        tiny_model.embed_documents(embedded, context=embed_model.context),
        atol=1e-6,
    )
    if step == "CDEContextFit":
        assert embed_model.context == tiny_model.fit_context(embedded)

    # The empty file gets content later: the docstore sees a change and indexes it.
    later = llama_documents(texts)
    later[2] = Document(text="Now the file has text.", id_="empty-a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pipeline.run(documents=later)
    assert [n.ref_doc_id for n in again] == ["empty-a"]
    assert "empty-a" in vector_store.data.text_id_to_ref_doc_id.values()
