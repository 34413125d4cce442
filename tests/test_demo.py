"""The demo without a browser: indexing, answering, the context panel, safety, the CLI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from chat_server import running as running_chat_server

from cde_rag.answer import LLMConfig, cited_numbers
from cde_rag.demo_app import (
    DemoIndex,
    build_demo,
    chat_text,
    context_markdown,
    file_rows,
    launch,
    launch_options,
    md_escape,
    sample_files,
    source_rows,
    status_markdown,
    warn_if_exposed,
)
from cde_rag.hosts import HostCheckMiddleware

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "cde-rag")

PETS = """# Pets
Cats sleep for most of the day and purr when they are content.
Dogs need a long walk twice a day.

A parrot can live for many decades and learns to copy words."""
GEO = """Geography notes.
Paris is the capital of France, and the Seine flows through it.
Lyon is famous for its food. Marseille is a port on the Mediterranean."""


def plain(markdown: str) -> str:
    """Markdown as the reader sees it: backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path) -> list[Path]:
    folder = tmp_path / "uploads"
    folder.mkdir()
    return [write(folder, "pets.md", PETS), write(folder, "geo.txt", GEO)]


@pytest.fixture
def index(tiny_model, tmp_path) -> DemoIndex:
    return DemoIndex(tiny_model, tmp_path / "data", chunk_size=120, chunk_overlap=0)


def blank_pdf() -> bytes:
    import io

    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_index_answer_and_restart(index, files, tiny_model, tmp_path):
    assert "Nothing indexed yet" in status_markdown(index)
    assert "No corpus context yet" in context_markdown(index)
    phases = []
    message = index.index_files(files, progress=lambda phase, done, total: phases.append(phase))
    assert message.startswith("**Indexed 2 files**")
    assert "fitted on these chunks" in message
    # Progress went through every phase, in order.
    assert list(dict.fromkeys(phases)) == ["load", "chunk", "context", "store"]
    docs = dict(index.documents())
    assert set(docs) == {"pets.md", "geo.txt"} and all(n >= 2 for n in docs.values())

    answer = index.answer("What is the capital of France?", k=3)
    assert answer.mode == "extractive"
    assert [s.number for s in answer.sources] == [1, 2, 3]
    assert answer.sources == sorted(answer.sources, key=lambda s: -s.score)
    cited = cited_numbers(answer.text)
    assert cited and set(cited) <= {1, 2, 3}
    # The quoted sentence really comes from the chunk its citation points at.
    first_sentence = answer.text.split(f" [{cited[0]}]")[0]
    assert first_sentence in " ".join(answer.sources[cited[0] - 1].text.split())
    assert "Paris is the capital of France" in answer.text
    rows = source_rows(answer.sources)
    assert [r[0] for r in rows] == [1, 2, 3]
    for row, source in zip(rows, answer.sources, strict=True):
        assert row[1:] == [f"{source.source} #{source.chunk} ({source.score:.3f})", source.text]

    context = index.context()
    panel = context_markdown(index)
    assert context.fingerprint in panel and "seed 42" in panel
    assert f"N = {tiny_model.corpus_size}" in panel

    # A new process (new DemoIndex, same folder) sees the same documents and context.
    again = DemoIndex(tiny_model, tmp_path / "data", chunk_size=120, chunk_overlap=0)
    assert dict(again.documents()) == docs
    assert again.context().fingerprint == context.fingerprint
    assert "**Indexed:** 2 files" in status_markdown(again)
    assert {row[0] for row in file_rows(again.files())} == {"pets.md", "geo.txt"}
    # Indexing the same files again stores nothing twice.
    assert ", 0 new," in again.index_files(files)
    assert dict(again.documents()) == docs


def test_bad_files_get_clear_reasons_and_lose_nothing(index, files, tmp_path):
    index.index_files(files)
    before = dict(index.documents())
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = [
        write(folder, "blob.txt", b"\x00\x01\x02\x03" * 100),
        write(folder, "scan.pdf", blank_pdf()),
        write(folder, "empty.md", b"   \n"),
        write(folder, "notes.docx", b"PK\x03\x04"),
        write(folder, "<img src=x onerror=alert(1)>.txt", b"\xff\xfe\x00"),
    ]
    message = index.index_files(bad)
    assert message.startswith("**Nothing indexed:**")
    assert "Skipped 5 files" in message
    assert "blob.txt: binary data" in message
    assert "no extractable text" in message
    assert "empty file" in message
    assert "unsupported file type" in message
    # The hostile name is shown as text: no live HTML tag reaches the page.
    assert "<img" not in message and "&lt;img src=x onerror=alert\\(1\\)&gt;.txt" in message
    assert dict(index.documents()) == before

    mixed = index.index_files([bad[0], files[0]])
    assert mixed.startswith("**Indexed 1 file**") and "Skipped 1 file:" in mixed

    assert "No files given" in index.index_files([])
    assert "smaller groups" in index.index_files([files[0]] * 51)


def test_upload_size_limit_of_the_index(tiny_model, files, tmp_path):
    small = DemoIndex(tiny_model, tmp_path / "data", max_file_bytes=100)
    message = plain(small.index_files(files))
    assert "Nothing indexed" in message and "over the 100-byte limit" in message


def test_refit_reembeds_with_a_new_context(index, files):
    index.index_files(files)
    before = index.context()
    count = index.collection().count()
    phases = []
    message = index.refit(7, progress=lambda phase, done, total: phases.append((phase, done)))
    after = index.context()
    assert after.fingerprint != before.fingerprint and after.seed == 7
    assert after.fingerprint[:12] in message
    assert index.collection().count() == count
    assert phases[0][0] == "context" and phases[-1] == ("store", count)
    # Stored vectors now match the new context: a stored chunk is its own best match.
    got = index.collection().get(limit=1, include=["documents", "embeddings"])
    fresh = index.model.embed_documents(got["documents"], context=after)
    np.testing.assert_allclose(np.asarray(got["embeddings"]), fresh, atol=1e-5)
    assert index.answer("capital of France").sources


def test_refit_with_nothing_indexed(index):
    assert "Nothing to re-fit" in index.refit(1)


def test_compare_ranks_the_same_chunks_with_and_without_context(index, files):
    index.index_files(files)
    question = "Where does the Seine flow?"
    result = index.compare(question, k=3)
    assert result.whole_collection and result.pool == index.collection().count()
    assert [r[0] for r in result.rows] == [1, 2, 3]
    # "With" is the stored index's own ranking.
    ranked = [f"{s.source} #{s.chunk}" for s in index.search(question, k=3)]
    assert [r[1] for r in result.rows] == ranked
    # "Without" is the fallback context's ranking of the same chunk texts.
    got = index.collection().get(include=["documents", "metadatas"])
    fallback = index.fallback_context()
    assert fallback.kind == "fallback"
    docs = index.model.embed_documents(got["documents"], context=fallback)
    query = index.model.embed_queries([question], context=fallback)[0]
    scores = docs @ query
    best = np.argsort(-scores, kind="stable")[:3]
    labels = [f"{m['source']} #{m['chunk']}" for m in got["metadatas"]]
    assert [r[3] for r in result.rows] == [labels[i] for i in best]
    np.testing.assert_allclose([r[4] for r in result.rows], scores[best], atol=1e-3)
    assert 0 <= result.overlap <= 3
    with pytest.raises(ValueError, match="Type a question"):
        index.compare("  ")


def test_compare_on_a_large_collection_ranks_the_best_candidates(index, files, monkeypatch):
    import cde_rag.demo.index as demo_index

    index.index_files(files)
    monkeypatch.setattr(demo_index, "COMPARE_ALL_UP_TO", 2)
    monkeypatch.setattr(demo_index, "COMPARE_CANDIDATES", 3)
    assert index.collection().count() > 3
    result = index.compare("Where does the Seine flow?", k=2)
    assert not result.whole_collection and result.pool == 3
    ranked = [f"{s.source} #{s.chunk}" for s in index.search("Where does the Seine flow?", k=2)]
    assert [r[1] for r in result.rows] == ranked


def test_questions_before_indexing_and_empty_questions(index):
    answer = index.answer("anything?")
    assert answer.sources == [] and "Nothing is indexed yet" in answer.text
    with index.lock:  # what a question sees while the first indexing runs
        assert "being built or re-embedded" in index.answer("anything?").text
    with pytest.raises(ValueError, match="Type a question"):
        index.answer("   ")
    with pytest.raises(ValueError, match="index some files"):
        index.compare("anything")


@pytest.mark.server
def test_llm_answers_through_a_real_openai_compatible_server(tiny_model, files, tmp_path):
    with running_chat_server() as base_url:
        index = DemoIndex(
            tiny_model,
            tmp_path / "data",
            llm=LLMConfig(base_url, "test-model"),
            chunk_size=120,
            chunk_overlap=0,
        )
        index.index_files(files)
        answer = index.answer("Where is Paris?")
        assert answer.mode == "llm"
        # The server names the source it received as [1]: the one the sources panel shows first.
        assert answer.text == f"The answer is in {answer.sources[0].source} [1]."
        assert chat_text(answer) == f"<p>{answer.text}</p>\n"

        index.llm = LLMConfig(base_url, "broken")
        answer = index.answer("Where is Paris?")
        assert answer.mode.startswith("extractive (LLM failed:") and "HTTP 500" in answer.mode
        assert cited_numbers(answer.text)
        assert "The LLM could not answer (LLM endpoint" in chat_text(answer)


def test_questions_stay_answerable_while_indexing(index, files, tmp_path):
    index.index_files(files[:1])
    more = write(tmp_path, "more.txt", GEO + "\nNice has a pebble beach.")
    in_store = threading.Event()

    def slow(phase: str, done: int, total: int) -> None:
        """Each step of storing takes a while (the progress callback is the hook)."""
        if phase == "store":
            in_store.set()
            time.sleep(1.0)

    results: dict[str, str] = {}
    indexing = threading.Thread(
        target=lambda: results.update(a=index.index_files([more], progress=slow))
    )
    second = threading.Thread(target=lambda: results.update(b=index.index_files(files)))
    indexing.start()
    assert in_store.wait(60)
    assert index.lock.locked()
    second.start()  # waits for the first: indexing runs one at a time
    answer = index.answer("Do cats purr?")
    assert answer.sources and indexing.is_alive()  # answered while indexing went on
    indexing.join(60)
    second.join(60)
    assert results["a"].startswith("**Indexed 1 file**")
    assert results["b"].startswith("**Indexed 2 files**")
    assert "more.txt" in dict(index.documents())


def test_another_models_index_is_explained_and_refit_repairs_it(
    index, files, make_checkpoint, tmp_path
):
    from cde_rag import CDEModel

    index.index_files(files)

    def bump(weights):
        key = next(k for k in weights if k.startswith("second_stage_model.") and "bias" in k)
        weights[key] = weights[key] + 0.01
        return weights

    other = CDEModel.from_pretrained(make_checkpoint("other", edit_weights=bump), device="cpu")
    assert other.fingerprint != index.model.fingerprint
    moved = DemoIndex(other, tmp_path / "data")
    assert "cannot be used with model" in status_markdown(moved)
    assert "Use 'Re-fit context' to re-embed" in plain(context_markdown(moved))
    message = moved.refit(42)
    assert message.startswith("Re-fitted")
    assert moved.context().model_fingerprint == other.fingerprint
    assert moved.answer("Where is Paris?").sources


def test_markdown_escaping():
    assert md_escape("<b>*x*</b> [1](javascript:1)") == (
        "&lt;b&gt;\\*x\\*&lt;/b&gt; \\[1\\]\\(javascript:1\\)"
    )


def test_failure_messages(capsys):
    from cde_rag.demo_app import failure
    from cde_rag.errors import ContextError

    assert failure(ContextError("refit it")) == "refit it"
    assert failure(OSError("disk full")) == "disk full"
    try:
        raise TypeError("bug here")
    except TypeError as exc:
        message = failure(exc)
    assert message.startswith("internal error (TypeError: bug here)")
    assert "Traceback" in capsys.readouterr().err


def test_safe_launch_options(tmp_path):
    options = launch_options(tmp_path / "data", port=7999, max_file_mb=3)
    assert options["server_name"] == "127.0.0.1" and options["server_port"] == 7999
    assert options["share"] is False and options["allowed_paths"] == []
    assert options["blocked_paths"] == [str((tmp_path / "data").resolve())]
    assert options["max_file_size"] == "3mb"
    assert options["enable_monitoring"] is False and options["mcp_server"] is False
    (check,) = options["app_kwargs"]["middleware"]
    assert check.cls is HostCheckMiddleware and check.kwargs["allowed"] == {"127.0.0.1"}
    proxied = launch_options(tmp_path / "data", allowed_hosts=["demo.example"])
    assert proxied["app_kwargs"]["middleware"][0].kwargs["allowed"] == {
        "127.0.0.1",
        "demo.example",
    }
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert warn_if_exposed("127.0.0.1") is None
    assert "reachable from other machines" in warn_if_exposed("0.0.0.0")


def test_upload_refuses_other_file_types(index, tmp_path):
    import gradio as gr
    from gradio.data_classes import FileData, ListFiles

    demo = build_demo(index)
    upload = next(b for b in demo.blocks.values() if b.elem_id == "files")
    exe = write(tmp_path, "tool.exe", b"MZ")
    with pytest.raises(gr.Error, match="Invalid file type"):
        upload.preprocess(ListFiles(root=[FileData(path=str(exe), orig_name="tool.exe")]))
    ok = write(tmp_path, "notes.md", "# Notes")
    assert upload.preprocess(ListFiles(root=[FileData(path=str(ok), orig_name="notes.md")])) == [
        str(ok)
    ]


def test_spaces_entry_builds_the_demo_from_the_environment(tiny_path, tmp_path, monkeypatch):
    import runpy

    import gradio as gr

    monkeypatch.setenv("CDE_RAG_MODEL", tiny_path)
    monkeypatch.setenv("CDE_RAG_DEMO_DATA", str(tmp_path / "space"))
    app = runpy.run_path(str(ROOT / "demo" / "app.py"))  # not __main__: builds, does not launch
    assert isinstance(app["demo"], gr.Blocks)
    assert app["index"].data_dir == (tmp_path / "space").resolve()
    assert app["index"].llm is None


def test_sample_documents_ship_inside_the_package():
    import cde_rag

    samples = sample_files()
    assert {p.suffix for p in samples} == {".md", ".txt", ".html"}
    package = Path(cde_rag.__file__).parent
    assert all(p.is_relative_to(package / "assets" / "samples") for p in samples)
    assert not (ROOT / "demo" / "samples").exists()  # nothing read from the checkout
    assert sample_files(ROOT / "tests") == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.server
def test_running_app_serves_nothing_outside_its_folders(index, files, capsys):
    index.index_files(files)
    demo = build_demo(index, samples=sample_files())
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"files", "index", "status", "question", "chatbot", "sources", "context"} <= ids
    port = free_port()
    launch(demo, index.data_dir, port=port, max_file_mb=1, prevent_thread_lock=True)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/").status_code == 200
            too_big = http.post(
                "/gradio_api/upload", files={"files": ("big.txt", b"a" * (1024 * 1024 + 10))}
            )
            assert too_big.status_code == 413
            ok = http.post("/gradio_api/upload", files={"files": ("small.txt", b"hello")})
            assert ok.status_code == 200
            sqlite = index.data_dir / "chroma" / "chroma.sqlite3"
            assert sqlite.is_file()
            for path in (sqlite, Path("/etc/passwd"), ROOT / "pyproject.toml"):
                assert http.get(f"/gradio_api/file={path}").status_code in (403, 404)
            # The API cannot make the server index a file of its own disk, only uploads.
            before = index.documents()
            outside = {"path": str(ROOT / "README.md"), "meta": {"_type": "gradio.FileData"}}
            call = http.post("/gradio_api/call/on_index", json={"data": [[outside]]})
            events = http.get(f"/gradio_api/call/on_index/{call.json()['event_id']}").text
            assert "event: error" in events and "not uploaded by a user" in events
            assert index.documents() == before
    finally:
        demo.close()


@pytest.mark.server
def test_cli_fails_fast_without_the_model(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    started = time.monotonic()
    result = subprocess.run(
        [CLI, "demo", "--data", str(tmp_path / "data"), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cde-rag demo: error:")
    assert "HF_HUB_OFFLINE" in lines[0] and "--model /path/to/checkpoint" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing created before the model loaded
    assert time.monotonic() - started < 90


def test_cli_rejects_bad_options(tmp_path, tiny_path, capsys, monkeypatch):
    from cde_rag.cli import main

    args = ["demo", "--model", tiny_path, "--data", str(tmp_path / "d")]
    with pytest.raises(SystemExit) as exit_info:  # a usage error: exit 2, with the usage
        main([*args, "--chunk-size", "100", "--chunk-overlap", "100"])
    assert exit_info.value.code == 2
    assert "--chunk-overlap must be from 0 to --chunk-size - 1" in capsys.readouterr().err
    monkeypatch.setenv("CDE_RAG_LLM_MODEL", "m")
    monkeypatch.delenv("CDE_RAG_LLM_BASE_URL", raising=False)
    assert main(args) == 1
    assert "CDE_RAG_LLM_BASE_URL" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
