"""Uploads in the demo: one bad file never costs the others, and uploads do not pile up."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from cde_rag.demo_app import DemoIndex, build_demo, bundled_samples_dir, launch

GOOD = {
    "pets.md": "# Pets\nCats sleep for most of the day. Dogs need a long walk twice a day.",
    "geo.txt": "Paris is the capital of France, and the Seine flows through it.",
}
# BeautifulSoup's html.parser refuses this with ParserRejectedMarkup (issue 12, item 4).
REJECTED_HTML = "<html><body><p>Hello</p><![ x</body></html>"


@pytest.fixture
def index(tiny_model, tmp_path) -> DemoIndex:
    return DemoIndex(tiny_model, tmp_path / "data", chunk_size=200, chunk_overlap=0)


def write_files(folder: Path, files: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    return paths


def test_a_file_the_parser_rejects_is_skipped_and_the_rest_indexed(index, tmp_path):
    paths = write_files(tmp_path / "in", {**GOOD, "broken.html": REJECTED_HTML})
    message = index.index_files([paths[0], paths[2], paths[1]])
    assert message.startswith("**Indexed 2 files**"), message
    assert "Skipped 1 file:" in message and "- broken.html: " in message
    assert set(dict(index.documents())) == set(GOOD)


def test_any_failure_of_one_file_skips_only_that_file(index, tmp_path, monkeypatch):
    """Whatever a loader raises for one file (here a bug stand-in), the others are indexed."""
    import cde_rag.documents as documents

    real = documents.load_documents

    def flaky(paths, **kwargs):
        if any(Path(path).name == "geo.txt" for path in paths):
            raise RuntimeError("loader bug\nsecond line of detail")
        return real(paths, **kwargs)

    monkeypatch.setattr(documents, "load_documents", flaky)
    paths = write_files(tmp_path / "in", GOOD)
    message = index.index_files(paths)
    assert message.startswith("**Indexed 1 file**"), message
    assert "geo.txt: could not be read \\(RuntimeError: loader bug\\)" in message
    assert set(dict(index.documents())) == {"pets.md"}
    # Nothing readable at all: nothing indexed, every reason listed.
    message = index.index_files(paths[1:])
    assert message.startswith("**Nothing indexed:**") and "RuntimeError" in message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.server
def test_uploads_are_deleted_after_indexing_and_nothing_else(index, tmp_path, monkeypatch):
    uploads = tmp_path / "gradio-uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    keep = write_files(tmp_path / "mine", {"keep.txt": "A file of mine that is not an upload."})
    samples = sorted(bundled_samples_dir().iterdir())
    demo = build_demo(index, samples=samples)
    port = free_port()
    launch(demo, index.data_dir, port=port, prevent_thread_lock=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            sent = [("files", (name, text.encode())) for name, text in GOOD.items()]
            sent.append(("files", ("broken.html", REJECTED_HTML.encode())))
            stored = [Path(p) for p in http.post("/gradio_api/upload", files=sent).json()]
            assert all(p.is_file() and p.is_relative_to(uploads) for p in stored)
            files = [{"path": str(p), "meta": {"_type": "gradio.FileData"}} for p in stored]
            call = http.post("/gradio_api/call/on_index", json={"data": [files]})
            events = http.get(f"/gradio_api/call/on_index/{call.json()['event_id']}").text
            assert "event: complete" in events and "Indexed 2 files" in events
            assert "broken.html" in events  # skipped, with its reason
            # Every file of this upload is gone (the skipped one too), and its folder.
            assert not any(p.exists() for p in stored)
            assert not any(p.parent.exists() for p in stored)
            # The samples are indexed from the package and stay where they are.
            call = http.post("/gradio_api/call/on_samples", json={"data": []})
            events = http.get(f"/gradio_api/call/on_samples/{call.json()['event_id']}").text
            assert "event: complete" in events and "Indexed 3 files" in events
            assert sorted(bundled_samples_dir().iterdir()) == samples
        assert keep[0].is_file()
        assert set(dict(index.documents())) == {*GOOD, *(p.name for p in samples)}
    finally:
        demo.close()


def test_discarding_uploads_touches_only_the_upload_folder(tmp_path):
    from cde_rag.demo.ui import discard_uploads

    uploads = tmp_path / "uploads"
    (inside,) = write_files(uploads / "abc123", {"a.txt": "x"})
    (nested,) = write_files(uploads / "abc123" / "deeper", {"n.txt": "x"})
    (outside,) = write_files(tmp_path / "elsewhere", {"b.txt": "x"})
    (top,) = write_files(uploads, {"top.txt": "x"})
    link = uploads / "def456"
    link.mkdir()
    (link / "link.txt").symlink_to(outside)
    escape = uploads / "abc123" / ".." / ".." / "elsewhere" / "b.txt"
    removed = discard_uploads([inside, nested, outside, top, link / "link.txt", escape], uploads)
    assert removed == [inside]
    assert not inside.exists() and inside.parent.is_dir()  # its folder is kept: not empty
    assert nested.exists() and outside.exists() and top.exists()
    assert (link / "link.txt").is_symlink() and outside.read_text() == "x"


def test_uploads_never_indexed_expire(index):
    demo = build_demo(index)
    frequency, age = demo.delete_cache
    assert frequency <= 3600 and age <= 86400
