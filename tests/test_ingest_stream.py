"""Ingestion streams (issue 17 items 2-3): documents and chunks go through in bounded batches,
Chroma is called per batch rather than per chunk, and the fit's streamed sample gives the
context a fit on the list of all chunks gives. Counted, never timed."""

from __future__ import annotations

import os
from collections import Counter

import chromadb
import pytest
from chromadb.api.models.Collection import Collection
from test_ingest import CHUNKING, expected_chunks, stored, write_corpus

import cde_rag.chroma.sources as sources
import cde_rag.ingest as ingest
from cde_rag import chroma
from cde_rag.ingest import index_paths

os.environ["ANONYMIZED_TELEMETRY"] = "False"
SETTINGS = chromadb.Settings(anonymized_telemetry=False)
BOUND = 24


def _client(path):
    return chromadb.PersistentClient(str(path), settings=SETTINGS)


@pytest.fixture
def held(monkeypatch):
    """The records of each write to the store (a real one), with the batch bound set low."""
    writes: list[list[int]] = []
    real = sources.write_sources

    def spy(collection, updates, **kwargs):
        writes.append([len(update.documents) for update in updates])
        return real(collection, updates, **kwargs)

    monkeypatch.setattr(ingest, "STREAM_CHUNKS", BOUND)
    monkeypatch.setattr(sources, "write_sources", spy)
    return writes


def test_chunks_are_held_a_bounded_batch_at_a_time_and_the_result_is_unchanged(
    tmp_path, tiny_model, held
):
    docs = write_corpus(tmp_path / "docs", files=12)
    chunks = expected_chunks(docs)
    per_file = Counter(c.source for c in chunks)
    report = index_paths(
        [docs],
        client=_client(tmp_path / "db"),
        collection="bounded",
        model=tiny_model,
        **CHUNKING,
    )
    assert report.added == len(chunks) > 3 * BOUND
    # Whole files per batch: a batch passes the bound only by its last file.
    assert all(sum(batch) - batch[-1] < BOUND for batch in held)
    assert max(sum(batch) for batch in held) < BOUND + max(per_file.values())
    assert sum(map(sum, held)) == len(chunks) and len(held) >= len(chunks) // (2 * BOUND)
    # The same records and the same context as a run that holds everything at once.
    assert stored(_client(tmp_path / "db"), "bounded").keys() == {c.id for c in chunks}


def test_the_streamed_fit_samples_what_a_fit_on_all_chunks_samples(tmp_path, tiny_model, held):
    for files in (3, 12):  # fewer chunks than the corpus size (32), and more
        docs = write_corpus(tmp_path / f"docs{files}", files=files)
        texts = [c.text for c in expected_chunks(docs)]
        name = f"fit{files}"
        index_paths(
            [docs],
            client=_client(tmp_path / "db"),
            collection=name,
            model=tiny_model,
            seed=7,
            **CHUNKING,
        )
        context = chroma.get_context(chroma.open_collection(_client(tmp_path / "db"), name))
        reference = tiny_model.fit_context(texts, seed=7)
        assert context.minicorpus == reference.minicorpus
        assert context.fingerprint == reference.fingerprint
        assert context.source_size == len(texts)


class _Calls:
    """Counts calls to Chroma's Collection methods that read or write records."""

    METHODS = ("get", "add", "update", "delete", "upsert", "query")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.METHODS:
            real = getattr(Collection, name)

            def counted(self_, *args, _real=real, **kwargs):
                self.count += 1
                return _real(self_, *args, **kwargs)

            monkeypatch.setattr(Collection, name, counted)


def test_chroma_calls_grow_with_batches_not_chunks(tmp_path, tiny_model, monkeypatch):
    calls = _Calls(monkeypatch)
    counts = {}
    for files in (4, 40):
        docs = write_corpus(tmp_path / f"docs{files}", files=files, seed=files)
        client = _client(tmp_path / f"db{files}")
        chroma.create_collection(client, "calls", model=tiny_model, corpus=["a", "b"])
        before = calls.count
        report = index_paths([docs], client=client, collection="calls", batch_size=64, **CHUNKING)
        counts[files] = (calls.count - before, report.added)
    (few, few_chunks), (many, many_chunks) = counts[4], counts[40]
    assert many_chunks >= 9 * few_chunks
    assert many <= 12 * few  # 10x the input, about 10x the calls
    assert many < many_chunks / 8  # per batch of chunks, not per chunk
