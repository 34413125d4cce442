"""`cde-rag index` syncs, not just adds (issue 15 part 1): a changed file's chunks are replaced,
an unchanged file is not even chunked again, files gone from the folders given are listed and,
with --prune, removed; the result equals a clean run of the folder as it is now."""

from __future__ import annotations

import json
import os
from pathlib import Path

import chromadb
import numpy as np
import pytest
from test_ingest import CHUNKING, expected_chunks, stored, write_corpus

import cde_rag.ingest as ingest
from cde_rag import chroma
from cde_rag.chroma.sources import RECORDS_KEY, VERSION_KEY
from cde_rag.cli import main
from cde_rag.ingest import index_paths

os.environ["ANONYMIZED_TELEMETRY"] = "False"
SETTINGS = chromadb.Settings(anonymized_telemetry=False)
CHANGED = "docs/doc01.txt"
DELETED = "docs/doc02.txt"
ADDED = "docs/new.txt"


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)


def edit(docs: Path) -> None:
    """Rewrite the middle of one file, delete another, add a third."""
    path = docs / "doc01.txt"
    paragraphs = path.read_text().split("\n\n")
    paragraphs[1] = "The ferry crossed the wide river at dawn, loaded with grain. " * 3
    path.write_text("\n\n".join(paragraphs))
    (docs / "doc02.txt").unlink()
    (docs / "new.txt").write_text("A brand new note about boats on the shore. " * 6)


def records_of(client, name: str, source: str) -> dict[str, tuple[str, dict]]:
    return {i: r for i, r in stored(client, name).items() if r[1]["source"] == source}


def clean_run(tmp_path: Path, docs: Path, model) -> dict[str, tuple[str, dict]]:
    """What indexing the folder as it is now into a new collection stores."""
    client = chromadb.PersistentClient(str(tmp_path / "clean-db"), settings=SETTINGS)
    index_paths([docs], client=client, collection="clean", model=model, **CHUNKING)
    return stored(client, "clean")


def assert_vectors_match_the_context(client, name: str, model) -> None:
    col = chroma.open_collection(client, name)
    got = col.get(include=["documents", "embeddings"])
    expected = model.embed_documents(got["documents"], context=chroma.get_context(col))
    np.testing.assert_allclose(np.asarray(got["embeddings"]), expected, rtol=0, atol=1e-5)


def test_a_changed_file_is_replaced_and_gone_files_are_pruned_on_request(
    tmp_path, client, tiny_model, monkeypatch
):
    docs = write_corpus(tmp_path / "docs", files=6)
    first = index_paths([docs], client=client, collection="sync", model=tiny_model, **CHUNKING)
    old_changed = records_of(client, "sync", CHANGED)
    deleted = records_of(client, "sync", DELETED)
    assert old_changed and deleted
    edit(docs)

    chunked: list[str] = []
    real_chunk = ingest.chunk_documents

    def spy(documents, **kwargs):
        chunked.extend(d.source for d in documents)
        return real_chunk(documents, **kwargs)

    monkeypatch.setattr(ingest, "chunk_documents", spy)
    report = index_paths([docs], client=client, collection="sync", **CHUNKING)
    # Unchanged files are recognised from the version their chunks record: not chunked again.
    assert sorted(chunked) == [CHANGED, ADDED]
    now = {c.id: c for c in expected_chunks(docs)}
    new_changed = {i: c for i, c in now.items() if c.source == CHANGED}
    stored_changed = records_of(client, "sync", CHANGED)
    assert stored_changed.keys() == new_changed.keys()  # no old chunk remains
    assert all(stored_changed[i][0] == c.text for i, c in new_changed.items())
    kept = old_changed.keys() & new_changed.keys()
    assert kept and kept != old_changed.keys()  # some pieces were unchanged, some replaced
    added_here = len(new_changed) - len(kept) + sum(c.source == ADDED for c in now.values())
    assert (report.added, report.removed) == (added_here, len(old_changed) - len(kept))
    assert report.chunks == len(now) and report.skipped == len(now) - added_here
    # The deleted file keeps its chunks, and the report says so.
    assert records_of(client, "sync", DELETED).keys() == deleted.keys()
    assert report.gone == [DELETED] and report.pruned == []
    assert f"still indexed: {DELETED}; pass --prune" in report.summary()
    assert report.context == first.context

    pruned = index_paths([docs], client=client, collection="sync", prune=True, **CHUNKING)
    assert (pruned.added, pruned.removed, pruned.pruned, pruned.gone) == (
        0,
        len(deleted),
        [DELETED],
        [],
    )
    assert stored(client, "sync") == clean_run(tmp_path, docs, tiny_model)
    assert_vectors_match_the_context(client, "sync", tiny_model)

    chunked.clear()
    again = index_paths([docs], client=client, collection="sync", prune=True, **CHUNKING)
    assert (again.added, again.removed, again.skipped, chunked) == (0, 0, len(now), [])

    status = chroma.context_status(chroma.open_collection(client, "sync"), sample=0)
    assert status.fitted_on == first.chunks and status.records == len(now)
    assert status.removed == report.removed + pruned.removed
    assert status.added == report.added


def test_prune_looks_only_at_the_folders_given_and_keeps_unreadable_files(
    tmp_path, client, tiny_model
):
    docs = write_corpus(tmp_path / "docs", files=4)
    notes = write_corpus(tmp_path / "notes", files=2, seed=1)
    index_paths([docs, notes], client=client, collection="two", model=tiny_model, **CHUNKING)
    (notes / "doc00.md").unlink()
    (docs / "doc03.md").write_bytes(b"\x00\x01" * 50)  # still there, unreadable now
    before = stored(client, "two")

    report = index_paths([docs], client=client, collection="two", prune=True, **CHUNKING)
    assert report.pruned == [] and report.removed == 0
    assert any(Path(p).name == "doc03.md" for p, _ in report.errors)
    assert stored(client, "two") == before  # notes/ was not given; doc03.md still exists

    report = index_paths([notes], client=client, collection="two", prune=True, **CHUNKING)
    assert report.pruned == ["notes/doc00.md"]
    assert {r[1]["source"] for r in stored(client, "two").values()} == {
        *(f"docs/doc0{i}{'.md' if i % 3 == 0 else '.txt'}" for i in range(4)),
        "notes/doc01.txt",
    }


def test_chunks_stored_without_versions_are_relabelled_not_embedded_again(
    tmp_path, client, tiny_model
):
    docs = write_corpus(tmp_path / "docs", files=3)
    index_paths([docs], client=client, collection="old", model=tiny_model, **CHUNKING)
    col = client.get_collection("old", embedding_function=None)
    ids = col.get(include=[])["ids"]
    # As an older cde-rag stored them: no version keys.
    col.update(ids=ids, metadatas=[{VERSION_KEY: None, RECORDS_KEY: None}] * len(ids))
    assert not any(info.complete for info in chroma.list_sources(col))

    report = index_paths([docs], client=client, collection="old", **CHUNKING)
    assert (report.added, report.removed) == (0, 0)
    assert all(info.complete for info in chroma.list_sources(col))
    assert stored(client, "old") == clean_run(tmp_path, docs, tiny_model)


def test_the_cli_prunes_with_a_flag_and_reports_it(tmp_path, tiny_path, capsys):
    docs = write_corpus(tmp_path / "docs", files=4)
    db = str(tmp_path / "db")
    args = ["index", str(docs), "-c", "cli", "--db", db, *("--chunk-size", "200")]
    args += ["--chunk-overlap", "20", "--progress", "none"]
    assert main([*args, "--model", tiny_path]) == 0
    (docs / "doc02.txt").unlink()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "still indexed: docs/doc02.txt; pass --prune" in out
    assert main([*args, "--prune", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pruned"] == ["docs/doc02.txt"] and report["removed"] > 0
    assert report["gone"] == [] and report["added"] == 0
