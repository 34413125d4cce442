"""Chroma ingestion that survives crashes (kill -9, interrupted creates and rebuilds) and
concurrent use of one collection from several threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import chromadb
import numpy as np
import pytest
from chromadb.errors import NotFoundError

from cde_rag.chroma import (
    AddResult,
    _write_context,
    add_documents,
    context_collection_name,
    create_collection,
    document_id,
    get_context,
    open_collection,
    rebuild_collection,
)

SETTINGS = chromadb.Settings(anonymized_telemetry=False)


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)


@pytest.fixture(scope="module")
def texts(golden) -> list[str]:
    return golden["documents"] + golden["queries"]


def _store_name(col) -> str:
    return col.configuration_json["embedding_function"]["config"]["context_collection"]


def _assert_consistent(col, model, texts: list[str]) -> None:
    """Every text stored once, with the vector the stored context gives it."""
    ctx = get_context(col)
    ids = [document_id(t) for t in texts]
    got = col.get(ids=ids, include=["embeddings", "documents"])
    assert sorted(got["ids"]) == sorted(ids) and col.count() == len(ids)
    by_id = dict(zip(got["ids"], got["embeddings"], strict=True))
    expected = model.embed_documents(texts, context=ctx)
    for doc_id, vector in zip(ids, expected, strict=True):
        np.testing.assert_allclose(by_id[doc_id], vector, rtol=0, atol=1e-6)


# -- kill -9 --------------------------------------------------------------------------------------

INGEST = textwrap.dedent(
    """
    import json, sys, time
    import chromadb
    from cde_rag.chroma import add_documents, create_collection

    where, model, texts_file = sys.argv[1:4]
    texts = json.load(open(texts_file))
    client = chromadb.PersistentClient(where, settings=chromadb.Settings(anonymized_telemetry=False))
    print("creating", flush=True)
    col = create_collection(client, "docs", model=model, corpus=texts, get_or_create=True)

    def progress(done, total):
        print(f"progress {done} {total}", flush=True)
        time.sleep(0.3)  # give the test time to kill us between batches

    result = add_documents(col, texts, batch_size=2, progress=progress)
    print(f"result {result.added} {result.skipped}", flush=True)
    """
)


def _start(tmp_path, tiny_path, texts) -> subprocess.Popen[str]:
    script = tmp_path / "ingest.py"
    script.write_text(INGEST)
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "db"), tiny_path, str(texts_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )


def _kill_when(process: subprocess.Popen[str], line_prefix: str) -> list[str]:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line.strip())
        if line.startswith(line_prefix):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (seen, process.stderr.read())
    return seen


@pytest.mark.slow
def test_ingestion_killed_mid_way_finishes_on_rerun_without_duplicates(
    tmp_path, tiny_path, tiny_model, texts
):
    first = _start(tmp_path, tiny_path, texts)
    _kill_when(first, "progress 6 ")
    # Close the client before another process writes: Chroma caches collection state per process.
    with chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS) as client:
        survived = open_collection(client, "docs").count()  # the context is complete
    assert 6 <= survived < len(set(texts))

    rerun = _start(tmp_path, tiny_path, texts)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    added, skipped = map(int, out.strip().splitlines()[-1].split()[1:])
    assert added == len(set(texts)) - survived and skipped == len(texts) - added
    client = chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)
    col = open_collection(client, "docs")
    assert get_context(col) == tiny_model.fit_context(texts)
    _assert_consistent(col, tiny_model, list(dict.fromkeys(texts)))


@pytest.mark.slow
def test_creation_killed_early_leaves_no_collection_or_a_complete_one(
    tmp_path, tiny_path, tiny_model, texts
):
    first = _start(tmp_path, tiny_path, texts)
    _kill_when(first, "creating")
    with chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS) as client:
        try:
            col = open_collection(client, "docs")
        except NotFoundError:
            pass  # killed before the collection existed: fine
        else:
            assert get_context(col) == tiny_model.fit_context(texts)
    rerun = _start(tmp_path, tiny_path, texts)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    client = chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)
    _assert_consistent(open_collection(client, "docs"), tiny_model, list(dict.fromkeys(texts)))


# -- every state an interrupted create can leave ---------------------------------------------------


def test_create_repairs_a_torn_context_collection(client, tiny_model, texts):
    ctx = tiny_model.fit_context(texts)
    store = _write_context(client, context_collection_name("docs", ctx.fingerprint), ctx)
    client.get_collection(store).delete(ids=["000010", "000011"])  # torn by a crash
    col = create_collection(client, "docs", model=tiny_model, context=ctx)
    assert client.get_collection(store).count() == ctx.size
    assert get_context(col) == ctx
    add_documents(col, texts)
    _assert_consistent(col, tiny_model, list(dict.fromkeys(texts)))


def test_create_repairs_an_empty_context_collection(client, tiny_model, texts):
    ctx = tiny_model.fit_context(texts)
    # Killed right after creating the context collection, before any row was added.
    store = client.create_collection(
        context_collection_name("docs", ctx.fingerprint), embedding_function=None
    )
    store.add(ids=["000000"], embeddings=[ctx.embeddings[0]])
    col = create_collection(client, "docs", model=tiny_model, context=ctx)
    assert get_context(col) == ctx


def test_create_reuses_a_complete_context_collection(client, tiny_model, texts):
    ctx = tiny_model.fit_context(texts)
    name = _write_context(client, context_collection_name("docs", ctx.fingerprint), ctx)
    first_id = client.get_collection(name).id
    col = create_collection(client, "docs", model=tiny_model, context=ctx)
    assert _store_name(col) == name and client.get_collection(name).id == first_id


def test_open_finishes_a_create_killed_before_it_recorded_the_owner(client, tiny_model, texts):
    col = create_collection(client, "docs", model=tiny_model, context=tiny_model.fit_context(texts))
    store = client.get_collection(_store_name(col))
    store.modify(metadata={**store.metadata, "cde_rag_owner": None})
    assert "cde_rag_owner" not in client.get_collection(store.name).metadata
    open_collection(client, "docs")
    assert client.get_collection(store.name).metadata["cde_rag_owner"] == str(col.id)


def test_a_renamed_collection_keeps_its_context_when_the_name_is_reused(client, tiny_model, texts):
    ctx = tiny_model.fit_context(texts)
    old = create_collection(client, "docs", model=tiny_model, context=ctx)
    add_documents(old, texts[:3])
    old.modify(name="archive")
    new = create_collection(client, "docs", model=tiny_model, context=ctx)
    assert _store_name(new) != _store_name(old)
    assert get_context(open_collection(client, "archive")) == ctx
    assert open_collection(client, "archive").count() == 3


# -- interrupted rebuilds ------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    def progress(done: int, total: int) -> None:
        if done >= step:
            raise Interrupt

    return progress


def _on_last(done: int, total: int) -> None:
    if done == total:
        raise Interrupt


def test_an_interrupted_rebuild_resumes_and_a_half_swapped_one_finishes(client, tiny_model, texts):
    col = create_collection(
        client, "docs", model=tiny_model, corpus=texts, metadata={"owner": "team-a"}
    )
    add_documents(col, texts, metadatas=[{"i": i} for i in range(len(texts))])
    old_ctx = get_context(col)
    old_store = _store_name(col)
    new_ctx = tiny_model.fallback_context()

    with pytest.raises(Interrupt):
        rebuild_collection(client, "docs", context=new_ctx, batch_size=4, progress=_interrupt_at(4))
    # The old collection still answers, with its own context.
    assert get_context(open_collection(client, "docs")) == old_ctx
    staging = open_collection(client, "docs-cde-rebuild")
    assert 0 < staging.count() < len(set(texts))

    # Finished filling, then killed after dropping the old collection, before the rename.
    with pytest.raises(Interrupt):
        rebuild_collection(client, "docs", context=new_ctx, batch_size=4, progress=_on_last)
    assert open_collection(client, "docs-cde-rebuild").count() == len(set(texts))
    client.delete_collection("docs")
    with pytest.raises(NotFoundError, match="rebuild of it was interrupted"):
        open_collection(client, "docs")

    rebuilt = rebuild_collection(client, "docs")
    assert get_context(rebuilt) == new_ctx
    user_keys = {k: v for k, v in rebuilt.metadata.items() if not k.startswith("cde_rag_")}
    assert user_keys == {"owner": "team-a"}
    assert rebuilt.metadata["cde_rag_fit_baseline"] == rebuilt.count()  # the status restarts
    names = {c.name for c in client.list_collections()}
    assert names == {"docs", _store_name(rebuilt)} and old_store not in names
    _assert_consistent(rebuilt, tiny_model, list(dict.fromkeys(texts)))
    got = rebuilt.get(ids=[document_id(texts[5])], include=["metadatas"])
    assert got["metadatas"] == [{"i": 5}]


def test_rebuild_fits_on_the_stored_documents_by_default(client, tiny_model, texts):
    col = create_collection(client, "docs", model=tiny_model, context=tiny_model.fallback_context())
    add_documents(col, texts)
    stored = col.get(include=["documents"])["documents"]
    calls: list[tuple[int, int]] = []
    rebuilt = rebuild_collection(client, "docs", progress=lambda d, t: calls.append((d, t)))
    assert get_context(rebuilt) == tiny_model.fit_context(stored)
    assert calls[0] == (0, len(set(texts))) and calls[-1] == (len(set(texts)),) * 2
    _assert_consistent(rebuilt, tiny_model, list(dict.fromkeys(texts)))


def test_rebuild_with_the_same_context_keeps_a_working_collection(client, tiny_model, texts):
    ctx = tiny_model.fit_context(texts)
    col = create_collection(client, "docs", model=tiny_model, context=ctx)
    add_documents(col, texts)
    rebuilt = rebuild_collection(client, "docs", corpus=texts)  # same seed, same corpus
    assert get_context(rebuilt) == ctx
    assert {c.name for c in client.list_collections()} == {"docs", _store_name(rebuilt)}
    _assert_consistent(rebuilt, tiny_model, list(dict.fromkeys(texts)))


# -- threads --------------------------------------------------------------------------------------


def test_threads_adding_and_querying_one_collection(client, tiny_model, golden, texts):
    col = create_collection(client, "docs", model=tiny_model, corpus=texts)
    unique = list(dict.fromkeys(texts))
    halves = [unique[: len(unique) * 2 // 3], unique[len(unique) // 3 :]]  # they overlap
    errors: list[BaseException] = []
    results: list[AddResult] = []
    hits: list[list[str]] = []
    start = threading.Barrier(5)

    def guarded(fn):
        def run():
            try:
                start.wait()
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    def adder(part):
        return guarded(lambda: results.append(add_documents(col, part, batch_size=3)))

    def querier(collection):
        def run():
            for query in golden["queries"]:
                hits.append(collection.query(query_texts=[query], n_results=2)["ids"][0])

        return guarded(run)

    threads = [
        threading.Thread(target=adder(halves[0])),
        threading.Thread(target=adder(halves[1])),
        threading.Thread(target=adder(unique)),
        threading.Thread(target=querier(col)),
        threading.Thread(target=querier(client.get_collection("docs"))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(results) == 3 and all(r.added + r.skipped > 0 for r in results)
    assert all(len(h) <= 2 and set(h) <= {document_id(t) for t in unique} for h in hits)
    _assert_consistent(col, tiny_model, unique)
    assert add_documents(col, unique) == AddResult(added=0, skipped=len(unique))


def test_threads_creating_one_collection_get_the_same_one(client, tiny_model, texts):
    made: list = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(
                create_collection(
                    client, "docs", model=tiny_model, corpus=texts, get_or_create=True
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len({c.id for c in made}) == 1
    assert {get_context(c) for c in made} == {tiny_model.fit_context(texts)}
    assert sorted(c.name for c in client.list_collections()) == ["docs", _store_name(made[0])]
