"""LangChain's indexing API (`index` with a record manager) over a cde-rag Chroma collection:
edits and deletions follow the documents, unchanged chunks are not embedded again, and the
stored vectors are the engine's with the collection's context."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from framework_sync import RecordingEmbeddings, chroma_client, run_later
from langchain_chroma import Chroma
from langchain_classic.indexes import SQLRecordManager
from langchain_core.documents import Document
from langchain_core.indexing import index
from langchain_text_splitters import RecursiveCharacterTextSplitter

from cde_rag.chroma import create_collection, get_context, open_collection, rebuild_collection

SPLITTER = RecursiveCharacterTextSplitter(chunk_size=60, chunk_overlap=0)


def files(
    golden, edit: dict[str, str] | None = None, drop: tuple[str, ...] = (), large: bool = False
) -> list:
    """Each golden document as one "file", split into chunks that carry their file name.

    The last golden document is large (154 chunks, more than one `index` batch): left out
    unless `large`."""
    documents = golden["documents"] if large else golden["documents"][:-1]
    texts = {f"file{i}.txt": text for i, text in enumerate(documents)}
    texts.update(edit or {})
    docs = [Document(page_content=t, metadata={"source": n}) for n, t in texts.items()]
    return SPLITTER.split_documents([d for d in docs if d.metadata["source"] not in drop])


def stored(col) -> dict[str, list[str]]:
    """The chunks in the collection, by source file."""
    got = col.get(include=["documents", "metadatas"])
    chunks: dict[str, list[str]] = {}
    for text, meta in zip(got["documents"], got["metadatas"]):
        chunks.setdefault(meta["source"], []).append(text)
    return {name: sorted(texts) for name, texts in chunks.items()}


def expected(chunks) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for chunk in chunks:
        out.setdefault(chunk.metadata["source"], []).append(chunk.page_content)
    return {name: sorted(texts) for name, texts in out.items()}


def assert_engine_vectors(col, model):
    got = col.get(include=["documents", "embeddings"])
    np.testing.assert_allclose(
        np.asarray(got["embeddings"], dtype=np.float32),
        model.embed_documents(got["documents"], context=get_context(col)),
        rtol=0,
        atol=1e-6,
    )


@dataclass
class Indexed:
    """A cde-rag collection, LangChain's Chroma store over it, and a record manager that
    persists in SQLite next to the database."""

    client: ClientAPI
    col: Collection
    manager: SQLRecordManager
    embeddings: RecordingEmbeddings = field(init=False)
    store: Chroma = field(init=False)

    def __post_init__(self) -> None:
        self.reopen(self.col)

    def reopen(self, col: Collection) -> None:
        """Embeddings and store from the collection as it is stored now (its context)."""
        self.col = col
        self.embeddings = RecordingEmbeddings.from_chroma(col)
        self.store = Chroma(
            client=self.client,
            collection_name=col.name,
            embedding_function=self.embeddings,
            create_collection_if_not_exists=False,
        )

    def sync(self, docs: list[Document], cleanup: str) -> dict[str, int]:
        """One run of LangChain's indexing API, files identified by their "source"."""
        result = index(
            docs,
            self.manager,
            self.store,
            cleanup=cleanup,
            source_id_key="source",
            key_encoder="sha256",
        )
        return dict(result)


def record_manager(folder: str | Path) -> SQLRecordManager:
    manager = SQLRecordManager("chroma/docs", db_url=f"sqlite:///{Path(folder) / 'records.sqlite'}")
    manager.create_schema()
    return manager


@pytest.fixture
def lib(tmp_path, tiny_model, golden):
    client = chroma_client(tmp_path)
    corpus = [c.page_content for c in files(golden, large=True)]
    col = create_collection(client, "docs", model=tiny_model, corpus=corpus)
    yield Indexed(client, col, record_manager(tmp_path))
    client.close()


def test_incremental_replaces_edited_files_and_embeds_only_them(lib, tiny_model, golden):
    chunks = files(golden)
    context = get_context(lib.col)
    first = lib.sync(chunks, "incremental")
    assert first == {"num_added": len(chunks), "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
    assert sorted(lib.embeddings.recorded.take()) == sorted(c.page_content for c in chunks)
    assert stored(lib.col) == expected(chunks)
    assert_engine_vectors(lib.col, tiny_model)

    new_text = "A rewritten second file. It now talks about rivers and their deltas only."
    edited = files(golden, edit={"file2.txt": new_text})
    old = [c for c in chunks if c.metadata["source"] == "file2.txt"]
    new = [c for c in edited if c.metadata["source"] == "file2.txt"]
    again = lib.sync(edited, "incremental")
    assert again["num_added"] == len(new) and again["num_deleted"] == len(old)
    assert again["num_skipped"] == len(chunks) - len(old)
    assert sorted(lib.embeddings.recorded.take()) == sorted(
        c.page_content for c in new
    )  # nothing else
    assert stored(lib.col) == expected(edited)  # no chunk of the old file2 remains
    assert_engine_vectors(lib.col, tiny_model)
    assert get_context(lib.col) == context  # the collection keeps the context it was fitted with

    # Unchanged documents are never embedded again, however often the index runs.
    assert lib.sync(edited, "incremental") == {
        "num_added": 0,
        "num_updated": 0,
        "num_skipped": len(edited),
        "num_deleted": 0,
    }
    assert lib.embeddings.recorded.take() == []
    # cde-rag's own query (the collection's function) finds the chunks LangChain added.
    assert lib.col.query(query_texts=[new[0].page_content], n_results=1)["documents"] == [
        [new[0].page_content]
    ]


def test_a_deleted_file_goes_with_full_cleanup(lib, tiny_model, golden):
    chunks = files(golden)
    lib.sync(chunks, "incremental")
    lib.embeddings.recorded.take()

    # Incremental cleanup only replaces the sources it is handed: a file that is gone stays.
    remaining = files(golden, drop=("file5.txt",))
    kept = lib.sync(remaining, "incremental")
    assert kept["num_deleted"] == 0 and "file5.txt" in stored(lib.col)

    # Full cleanup removes whatever this run did not see; one edit embeds one file's chunks.
    edited = files(golden, edit={"file1.txt": "Only this file changed."}, drop=("file5.txt",))
    old = [c for c in chunks if c.metadata["source"] in ("file1.txt", "file5.txt")]
    result = lib.sync(edited, "full")
    assert result["num_added"] == 1 and result["num_deleted"] == len(old)
    assert result["num_skipped"] == len(edited) - 1
    assert lib.embeddings.recorded.take() == ["Only this file changed."]
    assert stored(lib.col) == expected(edited)
    assert set(lib.manager.list_keys()) == set(lib.col.get()["ids"])  # records and vectors agree
    assert_engine_vectors(lib.col, tiny_model)


RERUN = textwrap.dedent(
    """
    import json, sys
    from langchain_core.documents import Document
    from cde_rag.chroma import open_collection
    from framework_sync import chroma_client
    from test_langchain_indexing import Indexed, record_manager

    folder, chunks = sys.argv[1], json.loads(sys.argv[2])
    client = chroma_client(folder)
    lib = Indexed(client, open_collection(client, "docs"), record_manager(folder))
    docs = [Document(page_content=t, metadata={"source": s}) for t, s in chunks]
    result = lib.sync(docs, "full")
    print(json.dumps({"result": result, "embedded": lib.embeddings.recorded.take()}))
    """
)


def test_a_later_process_embeds_only_what_changed(lib, tmp_path, tiny_model, golden):
    chunks = files(golden)
    lib.sync(chunks, "full")
    lib.client.close()  # Chroma caches collection state per process: close before another writes

    edited = files(golden, edit={"file0.txt": "The first file, edited between the two runs."})
    payload = json.dumps([[c.page_content, c.metadata["source"]] for c in edited])
    out = run_later(RERUN, str(tmp_path), payload)
    old = [c for c in chunks if c.metadata["source"] == "file0.txt"]
    assert out["embedded"] == ["The first file, edited between the two runs."]
    assert out["result"] == {
        "num_added": 1,
        "num_updated": 0,
        "num_skipped": len(edited) - 1,
        "num_deleted": len(old),
    }
    reopened = open_collection(chroma_client(tmp_path), "docs")
    assert stored(reopened) == expected(edited)
    assert_engine_vectors(reopened, tiny_model)


def test_a_file_larger_than_a_batch_needs_scoped_full(lib, golden):
    """Incremental cleanup runs after each batch of `batch_size` chunks, on the sources of that
    batch: a file whose chunks span two batches loses its later chunks to the first batch's
    cleanup, and they are embedded again on every run. `scoped_full` cleans once, at the end."""
    chunks = files(golden, large=True)
    big = [c for c in chunks if c.metadata["source"] == "file10.txt"]
    assert len(big) > 100  # more than one batch of the default batch_size
    lib.sync(chunks, "scoped_full")
    assert len(lib.embeddings.recorded.take()) == len(chunks)

    again = lib.sync(chunks, "scoped_full")
    assert again["num_skipped"] == len(chunks) and lib.embeddings.recorded.take() == []
    incremental = lib.sync(chunks, "incremental")
    assert 0 < incremental["num_deleted"] == incremental["num_added"] < len(big)
    assert (
        len(lib.embeddings.recorded.take()) == incremental["num_added"]
    )  # embedded again for nothing
    assert stored(lib.col) == expected(chunks)


def test_after_a_refit_the_records_still_match_the_collection(lib, tiny_model, golden):
    """`rebuild_collection` re-embeds with a new context and keeps ids, so LangChain's records
    stay valid: the next run embeds nothing, and new chunks get the new context."""
    chunks = files(golden)
    lib.sync(chunks, "full")
    old = get_context(lib.col)
    lib.reopen(rebuild_collection(lib.client, "docs", corpus=[c.page_content for c in chunks]))
    assert get_context(lib.col) != old
    assert lib.embeddings.context == get_context(lib.col)
    assert lib.sync(chunks, "full")["num_skipped"] == len(chunks)
    edited = files(golden, edit={"file3.txt": "Written after the refit."})
    lib.sync(edited, "full")
    assert lib.embeddings.recorded.take() == ["Written after the refit."]
    assert stored(lib.col) == expected(edited)
    assert_engine_vectors(open_collection(lib.client, "docs"), tiny_model)
