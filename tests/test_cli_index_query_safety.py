"""`cde-rag index` and `cde-rag query` print text that comes from outside (file names, skip
reasons, stored chunk text and sources) only as visible escapes, never as terminal control
sequences (issue 12, item 13)."""

from __future__ import annotations

import json

import chromadb
import pytest

from cde_rag import chroma
from cde_rag.cli import main

ESCAPES = "\x1b]0;pwned\x07\x1b[2J"
RAW = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x202E, 0x202C]} - {"\n"}


def raw_controls(text: str) -> set[str]:
    return set(text) & RAW


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_path):
    """A collection indexed from a folder with a hostile file name and text, plus a chunk
    stored through the library with escape sequences in its text and source."""
    root = tmp_path_factory.mktemp("hostile")
    docs, db = root / "docs", root / "db"
    docs.mkdir()
    (docs / "river.md").write_text("River banks flood in spring. \u202etxt.exe\u202c bidi.")
    (docs / f"evil{ESCAPES}.txt").write_bytes(b"\x00binary" * 20)  # skipped, name printed
    argv = ["index", str(docs), "-c", "safe", "--db", str(db), "--model", tiny_path]
    assert main([*argv, "--progress", "none", "--no-cache"]) == 0
    client = chromadb.PersistentClient(
        path=str(db), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    chroma.add_documents(
        chroma.open_collection(client, "safe"),
        [f"{ESCAPES} river bank water"],
        ids=["hostile"],
        metadatas=[{"source": f"src{ESCAPES}.md", "chunk": 0}],
    )
    return docs, db


def test_index_escapes_skipped_names(indexed, tmp_path, tiny_path, capsys):
    docs, _ = indexed
    capsys.readouterr()
    argv = ["index", str(docs), "-c", "safe2", "--db", str(tmp_path / "db"), "--no-cache"]
    argv += ["--model", tiny_path]
    assert main([*argv, "--progress", "none"]) == 0
    out, err = capsys.readouterr()
    assert raw_controls(out + err) == set(), sorted(raw_controls(out + err))
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J.txt: binary data" in err
    assert main([*argv, "--progress", "none", "--json"]) == 0
    out, err = capsys.readouterr()
    assert raw_controls(out + err) == set()
    (skipped,) = json.loads(out)["errors"]
    assert skipped[0] == str(docs / f"evil{ESCAPES}.txt")


def test_query_escapes_stored_text_and_sources(indexed, capsys):
    _, db = indexed
    capsys.readouterr()
    argv = ["query", "river bank", "-c", "safe", "--db", str(db), "-k", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert raw_controls(out) == set(), sorted(raw_controls(out))
    assert "src\\x1b]0;pwned\\x07\\x1b[2J.md (chunk 0)" in out
    assert "    \\x1b]0;pwned\\x07\\x1b[2J river bank water" in out
    assert "\\u202etxt.exe\\u202c bidi." in out
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert raw_controls(out) == set()
    hits = {hit["id"]: hit for hit in json.loads(out)}
    assert hits["hostile"]["text"] == f"{ESCAPES} river bank water"
    assert hits["hostile"]["source"] == f"src{ESCAPES}.md"
