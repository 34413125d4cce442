"""`cde_rag.chroma`'s source API (issue 15 part 1): update a source (new records stored, old
ones deleted, unchanged ones neither embedded nor rewritten), delete a source, list sources;
interrupted updates finish on a re-run; ids of another source are refused before any write."""

from __future__ import annotations

import chromadb
import numpy as np
import pytest

from cde_rag.chroma import (
    SourceInfo,
    SourceRecords,
    add_documents,
    create_collection,
    delete_source,
    get_context,
    list_sources,
    update_source,
    update_sources,
)
from cde_rag.documents import chunk_id
from cde_rag.errors import InputError

SETTINGS = chromadb.Settings(anonymized_telemetry=False)
A = ["Rivers flood in spring.", "Fish swim upstream.", "The bank of the river is muddy."]
A2 = ["Rivers flood in spring.", "Salmon leap up the falls.", "Boats moor at the quay."]
B = ["A bank lends money.", "Mortgage rates rose."]


class Interrupt(Exception):
    pass


class CountingEmbedder:
    """The collection's model, counting the texts it is asked to embed."""

    def __init__(self, model):
        self.model = model
        self.texts: list[str] = []

    def embed_documents(self, texts, *, context, show_progress=None):
        self.texts += texts
        return self.model.embed_documents(texts, context=context, show_progress=show_progress)


@pytest.fixture
def col(tmp_path, tiny_model, golden):
    client = chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)
    return create_collection(client, "src", model=tiny_model, corpus=golden["documents"])


def records(col, source: str) -> dict[str, tuple[str, dict]]:
    got = col.get(where={"source": source}, include=["documents", "metadatas"])
    return dict(zip(got["ids"], zip(got["documents"], got["metadatas"]), strict=True))


def test_update_replaces_a_source_and_leaves_the_others(col, tiny_model):
    embedder = CountingEmbedder(tiny_model)
    first = update_source(col, "a.txt", A, metadatas=[{"page": i} for i in range(3)])
    update_source(col, "b.txt", B)
    assert (first.added, first.kept, first.removed) == (3, 0, 0)
    infos = {info.source: info for info in list_sources(col)}
    assert infos.keys() == {"a.txt", "b.txt"}
    assert infos["a.txt"].complete and infos["a.txt"].records == 3
    old_version = infos["a.txt"].version
    b_before = records(col, "b.txt")

    result = update_source(col, "a.txt", A2, embedder=embedder)
    assert (result.added, result.kept, result.removed) == (2, 1, 2)
    assert sorted(embedder.texts) == sorted(A2[1:])  # the unchanged piece was not embedded
    stored = records(col, "a.txt")
    assert stored.keys() == {chunk_id("a.txt", i, t) for i, t in enumerate(A2)}
    assert sorted(text for text, _ in stored.values()) == sorted(A2)
    kept = stored[chunk_id("a.txt", 0, A2[0])][1]
    assert "page" not in kept  # relabelled: the new metadata, old keys gone
    assert kept["cde_rag_source_version"] != old_version
    assert records(col, "b.txt") == b_before
    vectors = col.get(ids=list(stored), include=["documents", "embeddings"])
    expected = tiny_model.embed_documents(vectors["documents"], context=get_context(col))
    np.testing.assert_allclose(np.asarray(vectors["embeddings"]), expected, atol=1e-5, rtol=0)

    embedder.texts.clear()
    again = update_source(col, "a.txt", A2, embedder=embedder)
    assert (again.added, again.kept, again.removed, again.unchanged_sources) == (
        0,
        3,
        0,
        ["a.txt"],
    )
    assert embedder.texts == []


def test_delete_source_and_list_sources(col):
    update_sources(col, [SourceRecords("a.txt", A), SourceRecords("b.txt", B)])
    add_documents(col, ["A document added without a source."])
    assert [info.source for info in list_sources(col)] == ["a.txt", "b.txt"]
    assert list_sources(col, ["b.txt", "nope"]) == [
        SourceInfo("b.txt", 2, list_sources(col)[1].version)
    ]
    assert delete_source(col, "a.txt") == 3
    assert delete_source(col, "a.txt") == 0
    assert [info.source for info in list_sources(col)] == ["b.txt"]
    assert col.count() == 3


@pytest.mark.parametrize("where", ["storing", "before deleting"])
def test_an_interrupted_update_is_finished_by_running_it_again(col, where):
    update_source(col, "a.txt", A)
    old = set(records(col, "a.txt"))
    progress = removing = None
    if where == "storing":

        def progress(done, total):
            if done >= 1:
                raise Interrupt

    else:

        def removing(done, total):
            raise Interrupt

    with pytest.raises(Interrupt):
        update_sources(
            col, [SourceRecords("a.txt", A2)], batch_size=1, progress=progress, removing=removing
        )
    stored = set(records(col, "a.txt"))
    assert old <= stored  # old records are deleted last: never neither
    assert not list_sources(col, ["a.txt"])[0].complete  # known to be unfinished

    result = update_source(col, "a.txt", A2)
    assert result.added == (1 if where == "storing" else 0)
    assert set(records(col, "a.txt")) == {chunk_id("a.txt", i, t) for i, t in enumerate(A2)}
    assert list_sources(col, ["a.txt"])[0].complete


def test_ids_held_by_another_source_are_refused_before_any_write(col):
    update_source(col, "a.txt", A)
    taken = next(iter(records(col, "a.txt")))
    before = col.get(include=["metadatas"])
    with pytest.raises(InputError, match="already stored for source 'a.txt'"):
        update_source(col, "b.txt", B, ids=["fresh-id", taken])
    with pytest.raises(InputError, match="unique across sources"):
        update_sources(
            col,
            [
                SourceRecords("c.txt", ["x"], ids=["same"]),
                SourceRecords("d.txt", ["y"], ids=["same"]),
            ],
        )
    with pytest.raises(InputError, match="non-empty string"):
        update_source(col, "", A)
    with pytest.raises(InputError, match="once per call"):
        update_sources(col, [SourceRecords("a.txt", A)], delete=["a.txt"])
    assert col.get(include=["metadatas"]) == before


def test_chroma_calls_grow_linearly_with_the_sources(tmp_path, tiny_model, golden):
    """10x the sources, at most 10x the Chroma round trips (and a re-run of unchanged sources
    costs the same few reads whatever their number)."""

    def calls(n: int) -> tuple[int, int]:
        client = chromadb.PersistentClient(str(tmp_path / f"db{n}"), settings=SETTINGS)
        col = create_collection(client, f"docs{n}", model=tiny_model, corpus=golden["documents"])
        counted = {"count": 0}
        for name in ("get", "add", "update", "delete"):
            real = getattr(col, name)

            def spy(*args, _real=real, **kwargs):
                counted["count"] += 1
                return _real(*args, **kwargs)

            setattr(col, name, spy)
        updates = [SourceRecords(f"s{i}", [f"w{i} a", f"w{i} b", f"w{i} c"]) for i in range(n)]
        update_sources(col, updates, batch_size=4)
        first, counted["count"] = counted["count"], 0
        update_sources(col, updates, batch_size=4)
        return first, counted["count"]

    small, small_again = calls(4)
    large, large_again = calls(40)
    assert large <= 10 * small + 2
    assert large_again == small_again <= 2
