"""Chroma collections carry their corpus context: create, reopen (other processes, a real
server), plain `get_collection`, and every refusal that keeps two contexts from mixing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chroma_server import chroma_server_fixture
from chromadb.errors import NotFoundError
from chromadb.utils.embedding_functions import known_embedding_functions

from cde_rag import CDEModel
from cde_rag.chroma import (
    EF_NAME,
    AddResult,
    CDEEmbeddingFunction,
    CollectionExistsError,
    add_documents,
    context_collection_name,
    create_collection,
    delete_collection,
    document_id,
    get_context,
    get_model,
    open_collection,
    rebuild_collection,
)
from cde_rag.errors import ContextError, ContextMismatchError, InputError

os.environ["ANONYMIZED_TELEMETRY"] = "False"
SETTINGS = chromadb.Settings(anonymized_telemetry=False)

chroma = chroma_server_fixture(scope="module")


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)


@pytest.fixture(scope="module")
def corpus(golden) -> list[str]:
    return golden["documents"] + golden["minicorpus"]


@pytest.fixture
def filled(client, tiny_model, golden, corpus):
    col = create_collection(client, "docs", model=tiny_model, corpus=corpus)
    add_documents(col, golden["documents"])
    return col


def _cosine_ranking(model: CDEModel, ctx, docs: list[str], query: str) -> list[str]:
    vectors = model.embed_documents(docs, context=ctx)
    q = model.embed_queries([query], context=ctx)[0]
    order = np.argsort(-(vectors @ q), kind="stable")
    return [document_id(docs[i]) for i in order]


# -- the embedding function and what is stored --------------------------------------------------


def test_embedding_function_is_registered_with_a_small_config(filled, tiny_model, corpus):
    assert known_embedding_functions[EF_NAME] is CDEEmbeddingFunction
    persisted = filled.configuration_json["embedding_function"]
    assert persisted["name"] == EF_NAME and persisted["type"] == "known"
    config = persisted["config"]
    ctx = tiny_model.fit_context(corpus)
    assert config["context_fingerprint"] == ctx.fingerprint
    assert config["model_fingerprint"] == tiny_model.fingerprint
    assert config["model"] == str(Path(tiny_model.name).resolve())
    assert config["context_collection"] == context_collection_name("docs", ctx.fingerprint)
    assert len(json.dumps(config)) < 600  # no matrix, no minicorpus in the config
    assert filled.configuration_json["hnsw"]["space"] == "cosine"
    ef = CDEEmbeddingFunction.build_from_config(config)
    assert ef.get_config() == config and not ef.is_legacy()


def test_context_rows_are_stored_in_order_in_a_companion_collection(
    client, filled, tiny_model, corpus
):
    ctx = tiny_model.fit_context(corpus)
    store = client.get_collection(context_collection_name("docs", ctx.fingerprint))
    got = store.get(include=["embeddings", "documents"])
    order = np.argsort(got["ids"])
    assert np.array_equal(np.asarray(got["embeddings"], dtype=np.float32)[order], ctx.embeddings)
    assert tuple(got["documents"][i] for i in order) == ctx.minicorpus
    loaded = get_context(filled)
    assert loaded == ctx and loaded.minicorpus == ctx.minicorpus and loaded.seed == ctx.seed
    assert loaded.kind == "fitted" and loaded.source_size == len(corpus)


def test_documents_and_queries_use_the_stored_context(filled, tiny_model, golden, corpus):
    ctx = tiny_model.fit_context(corpus)
    docs = golden["documents"]
    stored = filled.get(ids=[document_id(d) for d in docs], include=["embeddings"])
    by_id = dict(zip(stored["ids"], stored["embeddings"], strict=True))
    expected = tiny_model.embed_documents(docs, context=ctx)
    for doc, vector in zip(docs, expected, strict=True):
        # Chroma re-normalises vectors in cosine space: equal up to float32 rounding.
        np.testing.assert_allclose(by_id[document_id(doc)], vector, rtol=0, atol=1e-6)
    query = golden["queries"][0]
    hits = filled.query(query_texts=[query], n_results=len(docs), include=["distances"])
    assert hits["ids"][0] == _cosine_ranking(tiny_model, ctx, docs, query)
    q = tiny_model.embed_queries([query], context=ctx)[0]
    cosine = expected @ q
    distances = dict(zip(hits["ids"][0], hits["distances"][0], strict=True))
    for doc, cos in zip(docs, cosine, strict=True):
        assert distances[document_id(doc)] == pytest.approx(1 - cos, abs=1e-5)
    # A query is embedded as a query, not as a document.
    assert not np.allclose(q, tiny_model.embed_documents([query], context=ctx)[0])


def test_plain_get_collection_rebuilds_the_function_from_config(client, filled, golden):
    query = golden["queries"][1]
    opened = filled.query(query_texts=[query], n_results=5)
    plain = client.get_collection("docs")
    assert plain.query(query_texts=[query], n_results=5)["ids"] == opened["ids"]
    assert isinstance(plain.configuration["embedding_function"], CDEEmbeddingFunction)
    added = plain.add(ids=["extra"], documents=["An extra document about rivers."])
    assert added is None and plain.count() == len(golden["documents"]) + 1


def test_build_from_config_loads_nothing_and_contexts_are_read_once(
    client, filled, golden, monkeypatch
):
    config = dict(filled.configuration_json["embedding_function"]["config"])
    lazy = CDEEmbeddingFunction.build_from_config({**config, "model": "/no/such/checkpoint"})
    assert lazy.model_spec == "/no/such/checkpoint"  # nothing loaded, nothing raised

    from cde_rag.chroma import context_store as module

    built = []
    monkeypatch.setattr(module, "_CONTEXTS", {})
    real_context = module.CorpusContext
    monkeypatch.setattr(module, "CorpusContext", lambda **kw: built.append(1) or real_context(**kw))
    plain = client.get_collection("docs")
    for query in golden["queries"]:
        plain.query(query_texts=[query], n_results=2)
    open_collection(client, "docs").query(query_texts=golden["queries"][:1], n_results=2)
    assert len(built) == 1


def test_get_model_returns_the_shared_model(client, filled, tiny_path):
    from cde_rag import shared_model

    plain = client.get_collection("docs")
    assert get_model(plain) is shared_model(str(Path(tiny_path).resolve()))
    assert get_model(filled).fingerprint == get_model(plain).fingerprint


# -- reopening in another process, embedded and against a server ---------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    import chromadb
    from cde_rag.chroma import add_documents, create_collection, open_collection

    role, model, out, *places = sys.argv[1:]
    data = json.loads(sys.stdin.read())
    settings = chromadb.Settings(anonymized_telemetry=False)
    result = {}
    for where in places:
        if where.startswith("http://"):
            host, port = where[len("http://"):].split(":")
            client = chromadb.HttpClient(host=host, port=int(port), settings=settings)
        else:
            client = chromadb.PersistentClient(where, settings=settings)
        if role == "writer":
            col = create_collection(client, "docs", model=model, corpus=data["corpus"])
            add_documents(col, data["documents"])
            cols = {"created": col}
        else:
            cols = {"opened": open_collection(client, "docs"), "plain": client.get_collection("docs")}
        for key, col in cols.items():
            ef = col.configuration["embedding_function"]
            hits = col.query(query_texts=data["queries"], n_results=len(data["documents"]))
            result[f"{where} {key}"] = {
                "vector": [float(x) for x in ef.embed_query(data["queries"][:1])[0]],
                "ids": hits["ids"],
                "distances": hits["distances"],
            }
    json.dump(result, open(out, "w"))
    """
)


def _run_child(tmp_path, role: str, places: list[str], model: str, golden, corpus) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / f"{role}.json"
    data = {"corpus": corpus, "documents": golden["documents"], "queries": golden["queries"]}
    done = subprocess.run(
        [sys.executable, str(script), role, model, str(out), *places],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.server
def test_other_processes_reopen_persistent_and_server_collections(
    chroma, tmp_path, tiny_path, tiny_model, golden, corpus
):
    """One process creates and fills a collection in a PersistentClient folder and on a real
    `chroma run` server; another opens both with no corpus and gets bit-identical query vectors,
    the same ranking and the same distances."""
    places = [str(tmp_path / "db"), chroma.url]
    writer = _run_child(tmp_path, "writer", places, tiny_path, golden, corpus)
    reader = _run_child(tmp_path, "reader", places, tiny_path, golden, corpus)
    ctx = tiny_model.fit_context(corpus)
    expected = tiny_model.embed_queries(golden["queries"][:1], context=ctx)[0]
    for where in places:
        created = writer[f"{where} created"]
        for key in ("opened", "plain"):
            assert reader[f"{where} {key}"]["vector"] == created["vector"]
            assert reader[f"{where} {key}"]["ids"] == created["ids"]
            assert reader[f"{where} {key}"]["distances"] == created["distances"]
        np.testing.assert_allclose(created["vector"], expected, atol=1e-6)
        for query, ids in zip(golden["queries"], created["ids"], strict=True):
            assert ids == _cosine_ranking(tiny_model, ctx, golden["documents"], query)
    # This process finds the server's context too.
    assert get_context(open_collection(chroma.client(), "docs")) == ctx


@pytest.mark.server
def test_refusals_hold_on_a_chroma_server(chroma, tiny_model, golden):
    client = chroma.client()
    col = create_collection(client, "served", model=tiny_model, corpus=golden["documents"])
    assert add_documents(col, golden["documents"]).added == len(golden["documents"])
    assert add_documents(col, golden["documents"]).added == 0
    with pytest.raises(ContextMismatchError, match="rebuild_collection"):
        create_collection(client, "served", model=tiny_model, context=tiny_model.fallback_context())
    other = CDEEmbeddingFunction(tiny_model, context=tiny_model.fallback_context())
    with pytest.raises(ContextMismatchError, match="open_collection"):
        add_documents(client.get_collection("served", embedding_function=other), ["New."])
    store = col.configuration_json["embedding_function"]["config"]["context_collection"]
    client.delete_collection(store)
    with pytest.raises(ContextError, match="missing"):
        open_collection(client, "served")
    rebuilt = rebuild_collection(client, "served")  # refit on the stored documents, re-embed
    assert rebuilt.count() == len(golden["documents"])
    hits = rebuilt.query(query_texts=golden["queries"][:1], n_results=3)
    ctx = get_context(rebuilt)
    assert (
        hits["ids"][0]
        == _cosine_ranking(tiny_model, ctx, golden["documents"], golden["queries"][0])[:3]
    )


# -- refusals -------------------------------------------------------------------------------------


def test_refuses_to_change_the_context_of_an_existing_collection(client, filled, tiny_model):
    other = tiny_model.fallback_context()
    for get_or_create in (False, True):
        with pytest.raises(ContextMismatchError, match="rebuild_collection"):
            create_collection(
                client, "docs", model=tiny_model, context=other, get_or_create=get_or_create
            )
    with pytest.raises(CollectionExistsError, match="open_collection"):
        create_collection(client, "docs", model=tiny_model, context=get_context(filled))
    # get_or_create reuses the stored context and does not fit the corpus passed along.
    reopened = create_collection(
        client, "docs", model=tiny_model, corpus=["unrelated"], get_or_create=True
    )
    assert get_context(reopened) == get_context(filled)


def test_a_configuration_swapped_by_modify_is_refused_and_rebuild_recovers(
    client, filled, tiny_model, golden
):
    # Chroma stores a modified configuration *before* asking the function to validate it: the
    # function raises, and everything that reads the collection afterwards refuses it.
    other = create_collection(
        client, "other", model=tiny_model, context=tiny_model.fallback_context()
    )
    add_documents(other, ["Other collection, other context."])
    for swapped in (CDEEmbeddingFunction(tiny_model, context=get_context(other)), None):
        swapped = swapped or open_collection(client, "other")._embedding_function
        with pytest.raises(Exception, match="Refusing to change the context"):
            filled.modify(configuration={"embedding_function": swapped})
    with pytest.raises(ContextMismatchError, match="belongs to another collection"):
        open_collection(client, "docs")
    with pytest.raises(ContextMismatchError, match="configuration was replaced"):
        add_documents(client.get_collection("docs"), ["More."])
    rebuilt = rebuild_collection(client, "docs", corpus=golden["documents"])
    assert rebuilt.count() == len(golden["documents"])
    assert get_context(rebuilt) == tiny_model.fit_context(golden["documents"])
    assert open_collection(client, "other").count() == 1  # its context was left alone


def test_refuses_to_add_with_another_context(client, filled, tiny_model, golden):
    other = CDEEmbeddingFunction(tiny_model, context=tiny_model.fallback_context())
    wrong = client.get_collection("docs", embedding_function=other)
    before = filled.count()
    with pytest.raises(ContextMismatchError, match="open_collection"):
        add_documents(wrong, ["A new document."])
    assert filled.count() == before


def test_refuses_a_missing_context_collection(client, filled, golden):
    store = filled.configuration_json["embedding_function"]["config"]["context_collection"]
    client.delete_collection(store)
    for call in (
        lambda: open_collection(client, "docs"),
        lambda: add_documents(filled, ["A new document."]),
        lambda: get_context(client.get_collection("docs")),
    ):
        with pytest.raises(ContextError, match="missing.*rebuild_collection"):
            call()
    assert filled.count() == len(golden["documents"])


def test_refuses_an_altered_context_collection(client, filled, tiny_model):
    from cde_rag.chroma import context_store as module

    config = filled.configuration_json["embedding_function"]["config"]
    store = client.get_collection(config["context_collection"])
    row = store.get(ids=["000003"], include=["embeddings"])["embeddings"][0]
    store.update(ids=["000003"], embeddings=[np.asarray(row) + 0.5])
    module._CONTEXTS.clear()  # as in a fresh process
    with pytest.raises(ContextError, match="altered"):
        open_collection(client, "docs")
    store.delete(ids=["000004"])
    with pytest.raises(ContextError, match="31 of the context's 32 rows"):
        open_collection(client, "docs")
    store.modify(metadata={**store.metadata, "cde_rag_fingerprint": "0" * 32})
    with pytest.raises(ContextError, match="altered or replaced"):
        open_collection(client, "docs")


def _perturbed(weights: dict) -> dict:
    return {k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()}


def test_refuses_another_model(client, filled, make_checkpoint):
    other = make_checkpoint("other", edit_weights=_perturbed)
    with pytest.raises(ContextMismatchError, match="re-embed"):
        open_collection(client, "docs", model=str(other))


def test_refuses_a_checkpoint_changed_under_the_collection(client, make_checkpoint, golden):
    path = make_checkpoint("moving")
    model = CDEModel.from_pretrained(str(path), device="cpu")
    create_collection(client, "docs", model=model, corpus=golden["documents"])
    edited = make_checkpoint("edited", edit_weights=_perturbed)
    shutil.copyfile(edited / "model.safetensors", path / "model.safetensors")
    with pytest.raises(ContextMismatchError, match="not the model"):
        get_model(client.get_collection("docs"))
    with pytest.raises(ContextMismatchError, match="re-embed"):
        open_collection(client, "docs")


def test_refuses_collections_without_a_cde_context(client, tiny_model):
    client.create_collection("plain", embedding_function=None)
    with pytest.raises(ContextError, match="not created by cde-rag"):
        open_collection(client, "plain")
    with pytest.raises(NotFoundError, match="create_collection"):
        open_collection(client, "absent")
    with pytest.raises(ContextError, match="exactly one of corpus= .* or context="):
        create_collection(client, "new", model=tiny_model)
    with pytest.raises(ContextError, match="exactly one"):
        create_collection(
            client, "new", model=tiny_model, corpus=["a"], context=tiny_model.fallback_context()
        )
    with pytest.raises(ContextError, match="needs the corpus context"):
        CDEEmbeddingFunction(tiny_model)
    with pytest.raises(ValueError, match="at most 480"):
        create_collection(client, "x" * 481, model=tiny_model, corpus=["a"])


# -- adding ---------------------------------------------------------------------------------------


def test_add_documents_is_idempotent_batched_and_reports_progress(client, tiny_model, golden):
    col = create_collection(client, "docs", model=tiny_model, context=tiny_model.fallback_context())
    docs = golden["documents"]
    calls: list[tuple[int, int]] = []
    first = add_documents(col, docs[:5], batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert first == AddResult(added=5, skipped=0)
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    metadatas = [{"n": i} for i in range(len(docs))]
    second = add_documents(col, docs + docs[:2], metadatas=metadatas + metadatas[:2], batch_size=4)
    assert second == AddResult(added=len(docs) - 5, skipped=5 + 2)
    assert col.count() == len(docs)
    assert add_documents(col, docs) == AddResult(added=0, skipped=len(docs))
    got = col.get(ids=[document_id(docs[7])], include=["metadatas", "documents"])
    assert got["metadatas"] == [{"n": 7}] and got["documents"] == [docs[7]]


def test_add_documents_with_given_ids_and_bad_input(client, tiny_model):
    col = create_collection(client, "docs", model=tiny_model, context=tiny_model.fallback_context())
    assert add_documents(col, ["a", "b"], ids=["x", "y"]) == AddResult(added=2, skipped=0)
    # An id already stored is skipped, not re-embedded or overwritten.
    assert add_documents(col, ["changed", "c"], ids=["x", "z"]) == AddResult(added=1, skipped=1)
    assert col.get(ids=["x"])["documents"] == ["a"]
    with pytest.raises(InputError, match="two different documents"):
        add_documents(col, ["p", "q"], ids=["same", "same"])
    with pytest.raises(InputError, match="2 ids for 1 documents"):
        add_documents(col, ["p"], ids=["1", "2"])
    with pytest.raises(InputError, match="metadatas"):
        add_documents(col, ["p"], metadatas=[{}, {}])
    with pytest.raises(InputError, match="list of strings"):
        add_documents(col, "one string")
    with pytest.raises(ValueError, match="batch_size"):
        add_documents(col, ["p"], batch_size=0)
    assert col.count() == 3


def test_delete_collection_removes_the_context_too(client, filled):
    store = filled.configuration_json["embedding_function"]["config"]["context_collection"]
    delete_collection(client, "docs")
    names = {c.name for c in client.list_collections()}
    assert "docs" not in names and store not in names
