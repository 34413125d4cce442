"""The shape of cde_rag.chroma: chromadb internals behind one version-checked door, a validated
embedding-function config, the old import surface, and the storing path for precomputed vectors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import chromadb
import numpy as np
import pytest

import cde_rag.chroma as package
from cde_rag.chroma import CDEEmbeddingFunction, create_collection, document_id, get_context
from cde_rag.chroma._compat import (
    SUPPORTED,
    UnsupportedChromaError,
    check_version,
    embedding_function_of,
    server_of,
)
from cde_rag.chroma.records import check_records, store_missing
from cde_rag.errors import CDEError, ContextError

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "integrations" / "cde_rag" / "chroma"


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(
        str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )


# -- the door to chromadb internals ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.5.0", "1.5.9", "1.5.10", "1.5.9.dev3"])
def test_supported_versions_pass(version):
    check_version(version)


@pytest.mark.parametrize("version", ["1.4.2", "1.6.0", "2.0.0", "0.6.3", "unknown"])
def test_other_versions_are_refused_naming_the_range(version):
    with pytest.raises(UnsupportedChromaError, match=re.escape(f"chromadb{SUPPORTED}")) as info:
        check_version(version)
    assert version in str(info.value) and isinstance(info.value, CDEError)


def test_importing_with_an_unsupported_chromadb_fails_clearly():
    code = (
        "import chromadb\n"
        "chromadb.__version__ = '1.6.0'\n"
        "try:\n"
        "    import cde_rag.chroma\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, '|', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("UnsupportedChromaError | ")
    assert "chromadb 1.6.0 is installed" in done.stdout and f"chromadb{SUPPORTED}" in done.stdout


def test_a_missing_internal_names_the_supported_range():
    class Changed:  # what a Collection of another chromadb might look like
        pass

    for read, attribute in ((server_of, "_client"), (embedding_function_of, "_embedding_function")):
        with pytest.raises(UnsupportedChromaError, match=f"Changed.{attribute}.*{SUPPORTED}"):
            read(Changed())


def test_pyproject_bounds_chromadb_to_the_supported_range():
    pyproject = (ROOT / "pyproject.toml").read_text()
    requirements = re.findall(r'^(\w+) = \[.*"(chromadb[^"]*)"', pyproject, re.MULTILINE)
    assert {extra for extra, _ in requirements} == {"chroma", "demo"}
    assert {spec for _, spec in requirements} == {f"chromadb{SUPPORTED}"}


def test_only_the_shim_touches_chromadb_internals():
    internals = re.compile(r"(?<!self)\.(_client|_embedding_function|_model)\b|SharedSystemClient")
    for path in PACKAGE.glob("*.py"):
        if path.name != "_compat.py":
            assert not internals.search(path.read_text()), path.name


def test_modules_stay_small():
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 500, sizes


def test_every_name_of_the_old_module_still_imports():
    old = [
        *("DEFAULT_MODEL", "EF_NAME", "MAX_NAME_LENGTH", "AddResult", "CDEEmbeddingFunction"),
        *("CollectionExistsError", "add_documents", "create_collection", "delete_collection"),
        *("document_id", "get_context", "get_model", "langchain_embeddings"),
        *("llama_index_embedding", "open_collection", "rebuild_collection"),
        *("context_collection_name", "_write_context"),
    ]
    assert set(old) - {"context_collection_name", "_write_context"} <= set(package.__all__)
    for name in [*old, *package.__all__]:
        assert getattr(package, name) is not None, name


# -- the embedding function's config ---------------------------------------------------------------


def _config(**changes) -> dict:
    config = {
        "version": 1,
        "model": "/models/cde",
        "revision": None,
        "model_fingerprint": "ab" * 16,
        "context_fingerprint": "cd" * 16,
        "context_collection": "docs-cde-context-cdcdcdcdcdcdcdcd",
        "tenant": "default_tenant",
        "database": "default_database",
    }
    config.update(changes)
    return {k: v for k, v in config.items() if v is not ...}


def test_a_valid_config_round_trips():
    ef = CDEEmbeddingFunction.build_from_config(_config())
    assert ef.get_config() == _config()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (_config(context_fingerprint=...), r"lacks \['context_fingerprint'\].*create_collection"),
        (_config(model=""), r"lacks \['model'\]"),
        (_config(version=2), "newer cde-rag.*upgrade"),
        (_config(tenant=7), "malformed at tenant: 7 is not of type"),
        (_config(version="1"), "malformed at version"),
        (_config(matrix=[[0.1]]), "malformed at the config.*'matrix' was unexpected"),
    ],
)
def test_a_bad_config_is_refused_saying_why(config, match):
    with pytest.raises(ContextError, match=match):
        CDEEmbeddingFunction.build_from_config(config)


# -- storing precomputed vectors ---------------------------------------------------------------------


def test_precomputed_vectors_are_stored_once_through_the_adding_path(client, tiny_model, golden):
    texts = golden["documents"]
    col = create_collection(client, "docs", model=tiny_model, corpus=texts)
    matrix = tiny_model.embed_documents(texts, context=get_context(col))
    asked: list[list[int]] = []

    def vectors_for(positions: list[int]) -> np.ndarray:
        asked.append(positions)
        return matrix[positions]

    ids = check_records(texts, None, None, None)
    first = store_missing(col, texts, ids, vectors_for, batch_size=3)
    assert (first.added, first.skipped) == (len(texts), 0)
    assert sorted(i for batch in asked for i in batch) == list(range(len(texts)))
    assert max(len(batch) for batch in asked) == 3
    stored = col.get(ids=ids, include=["embeddings"])
    by_id = dict(zip(stored["ids"], stored["embeddings"], strict=True))
    for doc_id, row in zip(ids, matrix, strict=True):
        np.testing.assert_allclose(by_id[doc_id], row, rtol=0, atol=1e-6)
    asked.clear()
    again = store_missing(col, texts, ids, vectors_for)
    assert (again.added, again.skipped) == (0, len(texts)) and asked == []
    hit = col.query(query_texts=[texts[2]], n_results=1)["ids"][0]
    assert hit == [document_id(texts[2])]
