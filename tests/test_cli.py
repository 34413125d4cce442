"""The `cde-rag` command line: index, query and context, in this process and in new ones,
against a local Chroma folder and a real `chroma run` server; errors as one readable line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chroma_server import chroma_server_fixture

from cde_rag.cli import COMMANDS, build_parser, main
from cde_rag.context import CorpusContext
from cde_rag.documents import chunk_documents, load_documents

os.environ["ANONYMIZED_TELEMETRY"] = "False"
chroma = chroma_server_fixture(scope="module")

TEXTS = {
    "rivers.md": "# Rivers\n\nA river bank is the land alongside a river. Rivers flood in spring.\n\n"
    "Fish swim upstream to spawn in cold, clear water.",
    "banks.txt": "A bank lends money. Savings accounts earn interest.\n\n"
    "Mortgage rates rose this year, so loans cost more.",
    "sub/boats.html": "<html><body><h1>Boats</h1><p>Sailing boats use the wind.</p>"
    "<p>Rowing boats use oars.</p></body></html>",
}
CHUNK_ARGS = ["--chunk-size", "120", "--chunk-overlap", "20"]


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "photo.png").write_bytes(b"\x89PNG\r\n")
    (root / "renamed.txt").write_bytes(bytes(range(256)) * 8)
    return root


def expected_ids(docs: Path) -> set[str]:
    loaded = load_documents([docs]).documents
    return {c.id for c in chunk_documents(loaded, chunk_size=120, chunk_overlap=20)}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m cde_rag.cli ARGS` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "cde_rag.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- help --------------------------------------------------------------------------------------


def test_help_lists_every_command_and_each_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name in COMMANDS:
        assert f"    {name}" in out
    parser = build_parser()
    for name in ("index", "query", "context"):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        assert text.startswith(f"usage: cde-rag {name}")
    with pytest.raises(SystemExit):
        parser.parse_args(["index", "--help"])
    index_help = capsys.readouterr().out
    for option in ("--collection", "--db", "--chroma-url", "--model", "--chunk-size", "--cache"):
        assert option in index_help
    with pytest.raises(SystemExit):
        parser.parse_args(["context", "fit", "--help"])
    assert "-o OUTPUT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["index"], "the following arguments are required"),
        (["query", "x"], "the following arguments are required: --collection"),
        (["index", "a", "--db", "d", "--chroma-url", "http://u"], "not allowed with argument"),
        (
            ["index", "a", "-c", "c", "--chunk-overlap", "2000"],
            "--chunk-overlap must be from 0 to --chunk-size - 1 (999), got 2000.",
        ),
        (["index", "a", "-c", "c", "--chroma-url", "ftp://x"], "starts with http:// or https://"),
        (["query", "x", "-c", "c", "--chroma-url", "http://h:99999"], "has an invalid port"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cde-rag") and message in err, err


# -- end to end, new processes -----------------------------------------------------------------


def check_query_json(result: subprocess.CompletedProcess[str], ids: set[str]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["id"] in ids for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    assert {h["source"] for h in hits} <= {
        "docs/rivers.md",
        "docs/banks.txt",
        "docs/sub/boats.html",
    }
    return hits


@pytest.mark.slow
def test_index_then_query_in_new_processes_local_db(tmp_path, docs, tiny_path, capsys):
    db = tmp_path / "chroma"
    ids = expected_ids(docs)
    index = cli(
        "index", str(docs), "-c", "notes", "--db", str(db), "--model", tiny_path, *CHUNK_ARGS
    )
    assert index.returncode == 0, index.stderr
    assert f"{len(ids)} chunks, {len(ids)} added, 0 already stored, 2 files skipped" in index.stdout
    assert "renamed.txt: binary data" in index.stderr
    assert "photo.png: unsupported file type '.png'" in index.stderr
    assert "Traceback" not in index.stderr
    assert (db / "cde-rag-embeddings.sqlite").is_file()  # the default embedding cache

    # A new process finds the collection, its model and its context from the folder alone.
    query = cli(
        "query", "when do rivers flood", "-c", "notes", "--db", str(db), "-k", "3", "--json"
    )
    check_query_json(query, ids)

    code, out, err = run_main(
        capsys, "query", "mortgage interest", "-c", "notes", "--db", str(db), "-k", "2"
    )
    assert code == 0, err
    assert out.startswith("[1] ") and "\n[2] " in out and "\n[3] " not in out


@pytest.mark.slow
@pytest.mark.server
def test_index_then_query_against_chroma_server(docs, tiny_path, chroma):
    ids = expected_ids(docs)
    url = chroma.url
    index = cli(
        "index",
        str(docs),
        "-c",
        "remote",
        "--chroma-url",
        url,
        "--model",
        tiny_path,
        *CHUNK_ARGS,
        "--json",
    )
    assert index.returncode == 0, index.stderr
    report = json.loads(index.stdout)
    assert (report["chunks"], report["added"], report["skipped"]) == (len(ids), len(ids), 0)
    assert report["store"] == url
    query = cli(
        "query", "boats with oars", "-c", "remote", "--chroma-url", url, "-k", "3", "--json"
    )
    check_query_json(query, ids)
    stored = chroma.client().get_collection("remote", embedding_function=None)
    assert set(stored.get(include=[])["ids"]) == ids


# -- in this process ---------------------------------------------------------------------------


def test_context_fit_show_save_and_collection(tmp_path, docs, tiny_path, capsys):
    db = str(tmp_path / "db")
    ctx_file = tmp_path / "ctx.safetensors"
    code, out, err = run_main(
        capsys, "context", "fit", str(docs), "-o", str(ctx_file), "--model", tiny_path, *CHUNK_ARGS
    )
    assert code == 0, err
    fitted = CorpusContext.load(ctx_file)
    n_chunks = len(expected_ids(docs))
    assert (fitted.kind, fitted.seed, fitted.source_size) == ("fitted", 42, n_chunks)
    assert f"Saved context {fitted.fingerprint}" in out and "renamed.txt: binary data" in err

    code, out, _ = run_main(capsys, "context", "show", str(ctx_file), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["fingerprint"] == fitted.fingerprint and shown["size"] == 32

    code, out, err = run_main(
        capsys, "context", "fit", str(docs), "-o", str(ctx_file), "--model", tiny_path
    )
    assert code == 1 and "exists; pass --force" in err and out == ""

    code, out, err = run_main(
        capsys,
        "index",
        str(docs),
        "-c",
        "ctxs",
        "--db",
        db,
        "--model",
        tiny_path,
        *CHUNK_ARGS,
        "--progress",
        "none",
    )
    assert code == 0, err
    code, out, _ = run_main(capsys, "context", "show", "-c", "ctxs", "--db", db)
    # Same chunks, same seed, same model: `index` fitted the same context as `context fit`.
    assert code == 0 and f"fingerprint: {fitted.fingerprint}" in out
    assert "minicorpus sample:" in out

    saved = tmp_path / "saved.safetensors"
    code, out, err = run_main(capsys, "context", "save", "-c", "ctxs", "--db", db, "-o", str(saved))
    assert code == 0, err
    assert CorpusContext.load(saved) == fitted

    code, out, err = run_main(
        capsys, "query", "fish", "-c", "ctxs", "--db", db, "--source", "docs/banks.txt", "-k", "9"
    )
    assert code == 0, err
    hit_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert hit_lines and all("docs/banks.txt (chunk " in line for line in hit_lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "x", "-c", "nothing", "--db", "{tmp}/missing"], "no Chroma database at"),
        (["query", "x", "-c", "nothing", "--db", "{tmp}"], "no collection 'nothing' in"),
        (
            ["index", "{tmp}/nope", "-c", "bad name", "--db", "{tmp}/db"],
            "Invalid collection name 'bad name'",
        ),
        (["index", "{tmp}/nope", "-c", "fine", "--db", "{tmp}/db"], "Nothing to index"),
        (["index", "{tmp}", "-c", "fine", "--db", "{tmp}/file.txt"], "--db must be a folder"),
        (
            ["query", "x", "-c", "fine", "--chroma-url", "http://127.0.0.1:9"],
            "cannot reach the Chroma server",
        ),
        (
            ["index", "{tmp}", "-c", "fine", "--db", "{tmp}/db", "--cache", "{tmp}"],
            "as an embedding cache",
        ),
        (["query", "  ", "-c", "fine", "--db", "{tmp}"], "The query is empty"),
        (["query", "x", "-c", "fine", "--db", "{tmp}", "-k", "0"], "k must be a positive integer"),
        (["context", "show", "{tmp}/file.txt"], "not a readable cde-rag context"),
        (["context", "show", "{tmp}/none.safetensors"], "No context file at"),
        (["context", "show"], "takes a context file PATH or --collection NAME"),
        (["context", "save", "-c", "fine", "--db", "{tmp}", "-o", "{tmp}"], "is a folder"),
    ],
)
def test_errors_are_one_line_with_exit_1(tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("not a context")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "index":
        argv += ["--progress", "none"]
    code, out, err = run_main(capsys, *argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"cde-rag {argv[0]}: error: ")
    assert message in err, err
    assert "Traceback" not in err


def test_interrupt_exits_130(monkeypatch, capsys):
    import cde_rag.cli.query as query

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(query, "run", interrupted)
    code, _, err = run_main(capsys, "query", "x", "-c", "abc")
    assert code == 130 and err == "cde-rag: interrupted\n"


def test_debug_env_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("CDE_RAG_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="no Chroma database"):
        main(["query", "x", "-c", "abc", "--db", str(tmp_path / "missing")])


def test_missing_extra_is_one_line_but_bugs_keep_their_traceback(monkeypatch, capsys):
    import cde_rag.cli.query as query

    def needs_gradio(args):
        raise ModuleNotFoundError("No module named 'gradio'", name="gradio")

    monkeypatch.setattr(query, "run", needs_gradio)
    code, _, err = run_main(capsys, "query", "x", "-c", "abc")
    assert code == 1
    assert err == (
        "cde-rag query: error: missing package 'gradio'; install the extras this command "
        "needs, e.g. pip install 'cde-rag[all]'\n"
    )

    def bug(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(query, "run", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["query", "x", "-c", "abc"])
