"""One lookup for cde-rag's folders (XDG aware) and for the files the package ships."""

from __future__ import annotations

from pathlib import Path

import cde_rag
from cde_rag.paths import asset, cache_dir, data_dir


def test_data_and_cache_folders_follow_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data_dir("chroma") == tmp_path / "home" / ".local" / "share" / "cde-rag" / "chroma"
    assert cache_dir("bench") == tmp_path / "home" / ".cache" / "cde-rag" / "bench"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir("server") == tmp_path / "data" / "cde-rag" / "server"
    assert cache_dir("bench", "x") == tmp_path / "cache" / "cde-rag" / "bench" / "x"
    # The XDG spec: a relative path in these variables is invalid, and ignored.
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    assert data_dir() == tmp_path / "home" / ".local" / "share" / "cde-rag"


def test_a_variable_of_the_app_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("CDE_RAG_TEST_DIR", "~/elsewhere")
    assert data_dir("demo", env="CDE_RAG_TEST_DIR") == Path("~/elsewhere").expanduser()
    monkeypatch.setenv("CDE_RAG_TEST_DIR", "")
    assert data_dir("demo", env="CDE_RAG_TEST_DIR") == tmp_path / "data" / "cde-rag" / "demo"


def test_the_cli_database_default_uses_it(monkeypatch, tmp_path):
    from cde_rag.cli._common import default_db

    monkeypatch.delenv("CDE_RAG_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db() == tmp_path / "cde-rag" / "chroma"
    monkeypatch.setenv("CDE_RAG_DB", str(tmp_path / "db"))
    assert default_db() == tmp_path / "db"


def test_assets_live_inside_the_package():
    package = Path(cde_rag.__file__).parent
    for parts in (
        ("bench", "backbone", "tokenizer.json"),
        ("bench", "config.json"),
        ("bench", "prose.txt"),
        ("eval-sample", "qrels", "test.tsv"),
    ):
        path = asset(*parts)
        assert path.is_file() and path.is_relative_to(package / "assets")
