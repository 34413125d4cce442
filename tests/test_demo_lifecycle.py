"""The demo's index follows the documents (issue 15): the indexed files are listed with their
chunks and when they were stored, one can be removed, a changed file uploaded again replaces its
old chunks, and the context panel says how stale the context is (counts since the fit, the drift
measured on demand) until a re-fit resets it. Without a browser (tests/test_demo_e2e.py drives
the same through the page)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from topic_texts import CODE, RIVERS, prose

from cde_rag.chroma import REFIT_THRESHOLD
from cde_rag.demo.file_times import FILE_NAME
from cde_rag.demo_app import DemoIndex, context_markdown, file_rows, status_markdown

PETS = """# Pets
Cats sleep for most of the day and purr when they are content.
Dogs need a long walk twice a day.

A parrot can live for many decades and learns to copy words."""
PETS_NEW = """# Pets
Goldfish swim in circles and remember their feeding time.
Rabbits dig burrows and thump the ground when they are alarmed."""
GEO = """Geography notes.
Paris is the capital of France, and the Seine flows through it.
Lyon is famous for its food. Marseille is a port on the Mediterranean."""


def paragraphs(words: list[str], count: int, seed: int) -> str:
    """`count` paragraphs on one topic: one chunk each at chunk_size 400."""
    return "\n\n".join(prose(words, count, seed))


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def stored(index: DemoIndex) -> dict[str, str]:
    """Every stored chunk: id -> text."""
    got = index.collection().get(include=["documents"])
    return dict(zip(got["ids"], got["documents"], strict=True))


@pytest.fixture
def index(tiny_model, tmp_path) -> DemoIndex:
    return DemoIndex(tiny_model, tmp_path / "data", chunk_size=120, chunk_overlap=0)


def test_files_are_listed_with_chunks_and_when_they_were_stored(index, tmp_path):
    assert index.files() == [] and file_rows([]) == []
    before = time.time()
    index.index_files(
        [write(tmp_path / "a", "pets.md", PETS), write(tmp_path / "a", "geo.txt", GEO)]
    )
    after = time.time()
    files = index.files()
    assert [f.name for f in files] == ["geo.txt", "pets.md"]
    metas = index.collection().get(include=["metadatas"])["metadatas"]
    for f in files:
        assert f.chunks == sum(m["source"] == f.name for m in metas) >= 2
        assert f.complete and before <= f.indexed_at <= after
    rows = file_rows(files)
    assert [row[:2] for row in rows] == [[f.name, f.chunks] for f in files]
    assert all(row[2].startswith(time.strftime("%Y-")) for row in rows)
    assert "**Indexed:** 2 files" in status_markdown(index)
    assert index.documents() == [(f.name, f.chunks) for f in files]  # the older API

    # A new process reads the same times back from the data folder.
    again = DemoIndex(index.model, tmp_path / "data", chunk_size=120, chunk_overlap=0)
    assert again.files() == files
    # Times are only cosmetics: an unreadable record loses them, never the index.
    (tmp_path / "data" / FILE_NAME).write_text("{not json")
    assert [(f.name, f.chunks, f.indexed_at) for f in again.files()] == [
        (f.name, f.chunks, None) for f in files
    ]
    assert file_rows(again.files())[0][2] == "not recorded"


def test_a_changed_file_uploaded_again_replaces_its_old_chunks(index, tmp_path):
    index.index_files(
        [write(tmp_path / "a", "pets.md", PETS), write(tmp_path / "a", "geo.txt", GEO)]
    )
    first = {f.name: f for f in index.files()}
    geo_chunks = {i: t for i, t in stored(index).items() if "Paris" in t or "Lyon" in t}
    fingerprint = index.context().fingerprint

    # The same content again stores nothing, and keeps its time.
    message = index.index_files([write(tmp_path / "b", "pets.md", PETS)])
    assert ", 0 new," in message and "replaced" not in message
    assert {f.name: f for f in index.files()} == first

    time.sleep(0.01)
    message = index.index_files([write(tmp_path / "c", "pets.md", PETS_NEW)])
    assert "old chunks replaced" in message or "old chunk replaced" in message, message
    texts = " ".join(stored(index).values())
    for old in ("Cats sleep", "Dogs need", "parrot"):
        assert old not in texts  # no chunk of the old version remains
    assert "Goldfish swim" in texts and "Rabbits dig" in texts
    # The other file and the context are untouched.
    assert {i: t for i, t in stored(index).items() if i in geo_chunks} == geo_chunks
    assert index.context().fingerprint == fingerprint
    files = {f.name: f for f in index.files()}
    assert files["geo.txt"] == first["geo.txt"]
    assert files["pets.md"].indexed_at > first["pets.md"].indexed_at
    metas = index.collection().get(include=["metadatas"])["metadatas"]
    assert files["pets.md"].chunks == sum(m["source"] == "pets.md" for m in metas)
    answer = index.answer("Which pets sleep most of the day and purr?", k=10)
    assert all("Cats" not in s.text for s in answer.sources)
    assert any("Goldfish" in s.text for s in answer.sources)
    status = index.status()
    assert status["removed"] > 0 and status["added"] > 0


def test_removing_a_file_deletes_its_chunks_and_keeps_the_context(index, tmp_path):
    index.index_files(
        [write(tmp_path / "a", "pets.md", PETS), write(tmp_path / "a", "geo.txt", GEO)]
    )
    geo = next(f for f in index.files() if f.name == "geo.txt")
    fingerprint = index.context().fingerprint
    phases = []

    message = index.remove_file("geo.txt", progress=lambda p, d, t: phases.append((p, d, t)))
    assert message.startswith("**Removed geo.txt:**") and f"{geo.chunks} chunks deleted" in message
    assert "until you re-fit" in message
    assert phases[0] == ("remove", 0, geo.chunks) and phases[-1] == (
        "remove",
        geo.chunks,
        geo.chunks,
    )
    assert [f.name for f in index.files()] == ["pets.md"]
    assert not any("Paris" in t for t in stored(index).values())
    assert index.context().fingerprint == fingerprint  # stays until a re-fit
    assert all(
        s.source == "pets.md" for s in index.answer("What is the capital of France?").sources
    )
    status = index.status()
    assert (status["removed"], status["added"]) == (geo.chunks, 0)
    assert status["records"] == status["fitted_on"] - geo.chunks
    panel = context_markdown(index)
    assert f"{geo.chunks} removed" in panel

    # Removing it again, or a name never indexed, changes nothing and says so.
    before = stored(index)
    assert "is not indexed" in index.remove_file("geo.txt")
    assert "is not indexed" in index.remove_file("<b>nope</b>.txt")
    assert "&lt;b&gt;" in index.remove_file("<b>nope</b>.txt")  # the name is shown, not run
    assert "Choose an indexed file" in index.remove_file("")
    assert stored(index) == before
    # Its time is forgotten: indexing it again records a new one.
    index.index_files([write(tmp_path / "a", "geo.txt", GEO)])
    assert next(f for f in index.files() if f.name == "geo.txt").indexed_at > geo.indexed_at


def test_the_context_panel_reports_staleness_and_a_refit_resets_it(tiny_model, tmp_path):
    index = DemoIndex(tiny_model, tmp_path / "data", chunk_size=400, chunk_overlap=0)
    assert index.status() is None and index.check_drift() is None
    rivers = [write(tmp_path / "a", f"rivers{i}.txt", paragraphs(RIVERS, 10, i)) for i in range(4)]
    index.index_files(rivers)
    status = index.status()
    assert status["fitted_on"] == status["records"] == 40
    assert (status["added"], status["removed"], status["drift"]) == (0, 0, None)
    assert "not measured for this context yet" in context_markdown(index)

    phases = []
    checked = index.check_drift(progress=lambda p, d, t: phases.append((p, d, t)))
    assert phases == [("drift", 0, 1), ("drift", 1, 1)]
    assert checked == index.status() and checked["sampled"] == 40
    assert checked["drift"] < REFIT_THRESHOLD and not checked["refit_recommended"]
    assert not checked["drift_outdated"]
    panel = context_markdown(index)
    assert f"**Drift:** {checked['drift']:.3f} on a sample of 40 chunks" in panel
    assert "no re-fit needed" in panel

    # The corpus moves to another topic: half the files replaced by code.
    for i in range(2):
        index.remove_file(f"rivers{i}.txt")
    index.index_files(
        [write(tmp_path / "b", f"code{i}.txt", paragraphs(CODE, 10, i)) for i in range(2)]
    )
    status = index.status()
    assert (status["records"], status["added"], status["removed"]) == (40, 20, 20)
    assert status["drift"] == checked["drift"] and status["drift_outdated"]
    assert "Measured before the latest changes" in context_markdown(index)
    moved = index.check_drift()
    assert moved["drift"] > REFIT_THRESHOLD and moved["refit_recommended"]
    assert not moved["drift_outdated"]
    panel = context_markdown(index)
    assert "Re-fit recommended" in panel and "Re-fit context" in panel

    index.refit(7)
    reset = index.status()
    assert (reset["fitted_on"], reset["records"], reset["added"], reset["removed"]) == (
        40,
        40,
        0,
        0,
    )
    assert reset["drift"] is None  # measured for the old context: not shown for the new one
    assert index.check_drift()["drift"] < REFIT_THRESHOLD
