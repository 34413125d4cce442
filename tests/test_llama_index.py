"""LlamaIndex adapter: real indexes and ingestion pipelines, cache-safe context fitting."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode, TextNode

from cde_rag.errors import ContextMismatchError, InputError, NotFittedError
from cde_rag.llama_index import CDEContextFit, CDEEmbedding, StaleVectorsWarning

ROOT = Path(__file__).resolve().parents[1]
SPLITTER = {"chunk_size": 64, "chunk_overlap": 0}


@pytest.fixture(scope="module")
def texts(golden) -> list[str]:
    return golden["documents"] + golden["minicorpus"][:9]


@pytest.fixture(scope="module")
def documents(texts) -> list[Document]:
    return [Document(text=t, metadata={"i": i}, id_=f"doc-{i}") for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def fitted(tiny_model, texts) -> CDEEmbedding:
    return CDEEmbedding(model=tiny_model, corpus=texts)


def embed_texts(nodes) -> list[str]:
    return [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


def test_vectors_equal_the_engine(tiny_model, texts, fitted):
    assert CDEEmbedding.class_name() == "CDEEmbedding"
    ctx = tiny_model.fit_context(texts, seed=42)
    assert fitted.context == ctx and fitted.context_fingerprint == ctx.fingerprint
    docs = np.array(fitted.get_text_embedding_batch(texts), dtype=np.float32)
    np.testing.assert_array_equal(docs, tiny_model.embed_documents(texts, context=ctx))
    single = np.array(fitted.get_text_embedding(texts[2]), dtype=np.float32)
    np.testing.assert_allclose(single, docs[2], atol=1e-6)  # alone: no padding, same vector
    query = np.array(fitted.get_query_embedding("Which river?"), dtype=np.float32)
    np.testing.assert_array_equal(query, tiny_model.embed_queries(["Which river?"], context=ctx)[0])


def test_fit_on_nodes_uses_the_embedded_text(tiny_model, documents):
    emb = CDEEmbedding(model=tiny_model).fit(documents)
    assert emb.context == tiny_model.fit_context(embed_texts(documents))
    assert emb.to_dict()["context_fingerprint"] == emb.context.fingerprint


def test_vector_store_index_with_retriever(tiny_model, documents, fitted):
    index = VectorStoreIndex.from_documents(documents, embed_model=fitted)
    nodes = list(index.docstore.docs.values())
    stored = index.vector_store.data.embedding_dict
    np.testing.assert_array_equal(
        np.array([stored[n.node_id] for n in nodes], dtype=np.float32),
        tiny_model.embed_documents(embed_texts(nodes), context=fitted.context),
    )
    query = "Bank protein corpus then one over other water."
    hits = index.as_retriever(similarity_top_k=3).retrieve(query)
    q = tiny_model.embed_queries([query], context=fitted.context)[0]
    scores = np.array([stored[n.node_id] for n in nodes]) @ q
    assert [h.node.node_id for h in hits] == [nodes[i].node_id for i in np.argsort(-scores)[:3]]


def test_context_fit_in_from_documents_then_incremental_insert(tiny_model, documents):
    emb = CDEEmbedding(model=tiny_model)
    index = VectorStoreIndex.from_documents(
        documents,
        embed_model=emb,
        transformations=[SentenceSplitter(**SPLITTER), CDEContextFit(emb)],
    )
    chunks = list(index.docstore.docs.values())
    assert len(chunks) > len(documents)  # the context saw chunks, as they are embedded
    assert emb.context == tiny_model.fit_context(embed_texts(chunks))
    before = emb.context
    index.insert(Document(text="A completely new document about rivers and banks."))
    assert emb.context is before  # incremental inserts keep the context
    new = [n for n in index.docstore.docs.values() if n.node_id not in {c.node_id for c in chunks}]
    stored = index.vector_store.data.embedding_dict
    np.testing.assert_array_equal(
        np.array([stored[n.node_id] for n in new], dtype=np.float32),
        tiny_model.embed_documents(embed_texts(new), context=before),
    )


FRESH_PROCESS = r"""
import json, sys
from llama_index.core import Document
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from cde_rag.llama_index import CDEContextFit, CDEEmbedding

model, store, texts, context_path = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
emb = CDEEmbedding(model, device="cpu")
fit = CDEContextFit(emb, context_path=context_path or None)
restored = emb.context_fingerprint
pipeline = IngestionPipeline(
    transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), fit, emb]
)
pipeline.load(store)
before = len(pipeline.cache.cache.get_all(pipeline.cache.collection))
docs = [Document(text=t, metadata={"i": i}, id_=f"doc-{i}") for i, t in enumerate(texts)]
nodes = pipeline.run(documents=docs)
print(json.dumps({
    "restored": restored,
    "fingerprint": emb.context_fingerprint,
    "new_cache_entries": len(pipeline.cache.cache.get_all(pipeline.cache.collection)) - before,
    "embeddings": [n.embedding for n in nodes],
    "query": emb.get_query_embedding("Which river?"),
}))
"""


def run_fresh(tiny_path, store, texts, context_path=""):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            tiny_path,
            str(store),
            json.dumps(texts),
            str(context_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_pipeline_cache_hit_in_a_fresh_process_leaves_the_model_fitted(
    tiny_model, tiny_path, texts, documents, tmp_path
):
    emb = CDEEmbedding(tiny_path, device="cpu")  # configured as in the fresh process
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(**SPLITTER), CDEContextFit(emb), emb],
        cache=IngestionCache(),
    )
    nodes = pipeline.run(documents=documents)
    assert emb.context == tiny_model.fit_context(embed_texts(nodes))
    np.testing.assert_allclose(  # batched differently, so not bit-identical
        [n.embedding for n in nodes],
        tiny_model.embed_documents(embed_texts(nodes), context=emb.context),
        atol=1e-6,
    )
    pipeline.persist(str(tmp_path / "store"))

    fresh = run_fresh(tiny_path, tmp_path / "store", texts)
    assert fresh["restored"] is None  # nothing to restore: the fit step must run
    assert fresh["fingerprint"] == emb.context_fingerprint
    # Only the fit step ran; the splitter and the embed step were cache hits (the refit is
    # deterministic, so the embed step's key, which holds the context fingerprint, matched).
    assert fresh["new_cache_entries"] == 1
    np.testing.assert_allclose(fresh["embeddings"], [n.embedding for n in nodes], atol=1e-6)
    np.testing.assert_allclose(fresh["query"], emb.get_query_embedding("Which river?"), atol=1e-6)


def test_pipeline_context_path_restores_and_keeps_context(
    tiny_model, tiny_path, texts, documents, tmp_path
):
    ctx_path = tmp_path / "context.safetensors"
    emb = CDEEmbedding(model=tiny_model)
    pipeline = IngestionPipeline(
        transformations=[
            SentenceSplitter(**SPLITTER),
            CDEContextFit(emb, context_path=str(ctx_path)),
            emb,
        ],
        cache=IngestionCache(),
    )
    pipeline.run(documents=documents)
    assert ctx_path.is_file() and not pipeline.transformations[1].refit
    pipeline.persist(str(tmp_path / "store"))

    # A later process inserts other documents: it must embed them with the saved context,
    # not fit a new one on the new documents alone.
    fresh = run_fresh(tiny_path, tmp_path / "store", [*texts[:3], "Brand new text."], ctx_path)
    assert fresh["restored"] == emb.context_fingerprint == fresh["fingerprint"]
    q = tiny_model.embed_queries(["Which river?"], context=emb.context)[0]
    np.testing.assert_allclose(fresh["query"], q, atol=1e-6)

    # A model holding another context is refused rather than mixed with the stored vectors.
    other = CDEEmbedding(model=tiny_model, corpus=texts[:4])
    with pytest.raises(ContextMismatchError, match="refit=True"):
        CDEContextFit(other, context_path=str(ctx_path))
    late = CDEEmbedding(model=tiny_model)
    step = CDEContextFit(late, context_path=str(tmp_path / "late.safetensors"))
    emb.save_context(tmp_path / "late.safetensors")  # appears after the step was created
    step([TextNode(text="Only this new chunk.")])
    assert late.context == emb.context  # restored, not fitted on the one new chunk
    refitter = CDEContextFit(other, context_path=str(ctx_path), refit=True)
    refitter(list(documents))
    assert other.context == tiny_model.fit_context(embed_texts(documents))
    assert ctx_path.is_file() and other.context_fingerprint != emb.context_fingerprint


def test_num_workers_is_a_clear_error(fitted, documents):
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(**SPLITTER), fitted])
    with pytest.raises(TypeError, match="num_workers=None"):
        pipeline.run(documents=documents, num_workers=2)


def test_unfitted_refuses(tiny_model, documents):
    emb = CDEEmbedding(model=tiny_model)
    assert not emb.is_fitted and emb.context_fingerprint is None
    for call in (
        lambda: emb.get_text_embedding("x"),
        lambda: emb.get_text_embedding_batch(["x", "y"]),
        lambda: emb.get_query_embedding("x"),
        lambda: asyncio.run(emb.aget_query_embedding("x")),
        lambda: asyncio.run(emb.aget_text_embedding_batch(["x"])),
        lambda: VectorStoreIndex.from_documents(documents, embed_model=emb),
    ):
        with pytest.raises(NotFittedError, match=r"\.fit\(corpus\)"):
            call()
    assert not emb.is_fitted
    fallback = CDEEmbedding(model=tiny_model, fallback=True)
    assert fallback.context == tiny_model.fallback_context()


def test_saved_context_and_refit_warning(tiny_model, texts, fitted, tmp_path):
    path = fitted.save_context(tmp_path / "ctx.safetensors")
    emb = CDEEmbedding(model=tiny_model, context=path)
    assert emb.context_fingerprint == fitted.context_fingerprint
    with pytest.raises(ContextMismatchError):
        CDEEmbedding(model=tiny_model, context_fingerprint="0" * 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb.fit(texts, seed=1)
        emb.get_query_embedding("q")
        emb.set_context(path)
    emb.get_text_embedding_batch(texts[:2])
    with pytest.warns(StaleVectorsWarning):
        emb.fit(texts, seed=2)


def test_configuration_guards(tiny_model, tiny_path):
    from llama_index.core.storage.kvstore import SimpleKVStore

    with pytest.raises(ValueError, match="embeddings_cache"):
        CDEEmbedding(model=tiny_model, embeddings_cache=SimpleKVStore())
    with pytest.raises(ValueError, match="fixed to"):
        CDEEmbedding(model=tiny_model, query_instruction="Represent this: ")
    a, b = CDEEmbedding(tiny_path, device="cpu"), CDEEmbedding(model=tiny_path, device="cpu")
    assert a.model is b.model
    assert CDEEmbedding(model=tiny_model).model is tiny_model


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda e: e.get_text_embedding_batch(["ok", None]), r"texts\[1\] is NoneType"),
        (lambda e: e.get_query_embedding(None), "query must be a str"),
        (lambda e: e.get_query_embedding("   "), "query is empty"),
        (lambda e: e.fit(None), "not None"),
        (lambda e: e.fit(TextNode(text="x")), "not one TextNode"),
        (lambda e: e.fit(["a", 1]), r"corpus\[1\] is int"),
        (lambda e: e.fit([TextNode(text="")]), "no text to fit on"),
    ],
)
def test_hostile_inputs(fitted, call, match):
    before = fitted.context
    with pytest.raises(InputError, match=match):
        call(fitted)
    assert fitted.context is before


def test_async_batches_and_pipeline(tiny_model, texts, documents, fitted):
    queries = [t[:25] for t in texts[:8]]

    async def main():
        batch = asyncio.create_task(fitted.aget_text_embedding_batch(texts * 4))
        ticks = 0
        while not batch.done():
            ticks += 1
            await asyncio.sleep(0)
        many = await asyncio.gather(*(fitted.aget_query_embedding(q) for q in queries))
        emb = CDEEmbedding(model=tiny_model)
        pipeline = IngestionPipeline(
            transformations=[SentenceSplitter(**SPLITTER), CDEContextFit(emb), emb]
        )
        nodes = await pipeline.arun(documents=documents)
        return ticks, await batch, many, emb, nodes

    ticks, docs, many, emb, nodes = asyncio.run(main())
    assert ticks > 1  # the event loop ran while the batch was embedded
    expected = tiny_model.embed_documents(texts, context=fitted.context)
    np.testing.assert_allclose(np.array(docs)[: len(texts)], expected, atol=1e-5)
    np.testing.assert_allclose(
        many, tiny_model.embed_queries(queries, context=fitted.context), atol=1e-5
    )
    assert emb.context == tiny_model.fit_context(embed_texts(nodes))
    np.testing.assert_allclose(
        [n.embedding for n in nodes],
        tiny_model.embed_documents(embed_texts(nodes), context=emb.context),
        atol=1e-5,
    )


def test_import_error_names_the_extra():
    code = (
        "import sys; sys.modules['llama_index.core'] = None\n"
        "try:\n    import cde_rag.llama_index\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "cde-rag[llamaindex]"' in out.stdout


def test_example_runs(tiny_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "llama_index_rag.py"), tiny_path],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CDE_RAG_MODEL": "must-not-be-used"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("context: ") and "fitted" in line for line in lines)
    assert sum(line.startswith("hit: ") for line in lines) == 2
