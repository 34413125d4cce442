"""What a Chroma collection records about its context and model (issue 15 part 3 follow-ups):
the context's checksum next to its recipe fingerprint, a context cache that never swaps two
fits of one recipe, the model's provenance and hub commit, and collections written by the
previous version (fingerprint = checksum, no checksum key, old model fingerprint) still open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import chromadb
import numpy as np
import pytest
from test_hub import (
    BACKBONE_COMMIT,
    BACKBONE_ID,
    COMMIT,
    HUB_ID,
    OLDER,
    cache_snapshot,
    checkpoint_files,
    hub_env,
)

from cde_rag import CDEModel
from cde_rag.chroma import (
    CDEEmbeddingFunction,
    add_documents,
    create_collection,
    get_context,
    get_model,
    open_collection,
)
from cde_rag.chroma import context_store as store_module
from cde_rag.chroma.context_store import CHECKSUM_KEY, FINGERPRINT_KEY, write_context
from cde_rag.context import numbers_checksum

SETTINGS = chromadb.Settings(anonymized_telemetry=False)


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "db"), settings=SETTINGS)


@pytest.fixture
def fresh_cache(monkeypatch):
    """The context cache of a fresh process."""
    monkeypatch.setattr(store_module, "_CONTEXTS", {})


def _config(col) -> dict:
    return col.configuration_json["embedding_function"]["config"]


def _ranking(col, query: str) -> list[str]:
    return col.query(query_texts=[query], n_results=col.count())["ids"][0]


def test_config_and_companion_record_fingerprint_and_checksum(client, tiny_model, golden):
    col = create_collection(client, "docs", model=tiny_model, corpus=golden["documents"])
    ctx = get_context(col)
    config = _config(col)
    assert (config["context_fingerprint"], config["context_checksum"]) == (
        ctx.fingerprint,
        ctx.checksum,
    )
    companion = client.get_collection(config["context_collection"])
    assert companion.metadata[FINGERPRINT_KEY] == ctx.fingerprint
    assert companion.metadata[CHECKSUM_KEY] == ctx.checksum
    assert companion.metadata["cde_rag_fit_dtype"] == "float32"


def test_two_fits_of_one_recipe_keep_their_own_numbers(
    client, tiny_model, tiny_path, golden, fresh_cache
):
    half = CDEModel.from_pretrained(tiny_path, device="cpu", dtype="bfloat16")
    exact = tiny_model.fit_context(golden["documents"])
    rounded = half.fit_context(golden["documents"])
    assert exact.fingerprint == rounded.fingerprint and exact.checksum != rounded.checksum
    create_collection(client, "exact", model=tiny_model, context=exact)
    create_collection(client, "rounded", model=tiny_model, context=rounded)
    store_module._CONTEXTS.clear()
    assert get_context(open_collection(client, "exact")).checksum == exact.checksum
    # Read through the exact fit's cache entry, the rounded collection still gets its numbers.
    assert get_context(open_collection(client, "rounded")).checksum == rounded.checksum
    plain = client.get_collection("rounded").configuration["embedding_function"]
    assert plain.context.checksum == rounded.checksum
    assert len(store_module._CONTEXTS) == 2


def test_the_collection_records_the_model_provenance(client, tiny_model, golden):
    col = create_collection(client, "docs", model=tiny_model, corpus=golden["documents"])
    # A local folder has no hub commits: only the backbone it names is recorded.
    assert col.metadata["cde_rag_backbone"] == tiny_model.provenance["backbone"]
    assert "cde_rag_model_revision" not in col.metadata
    assert _config(col)["revision"] is None


# Runs in a fresh interpreter under HF_HUB_OFFLINE=1, with hub caches laid out by hand.
HUB_CHILD = """
import json, sys
import chromadb
from cde_rag.chroma import create_collection, get_model, open_collection

action, db, *texts = sys.argv[1:]
client = chromadb.PersistentClient(db, settings=chromadb.Settings(anonymized_telemetry=False))
if action == "create":
    col = create_collection(client, "docs", model="jxm/cde-small-v2", corpus=texts)
else:
    col = open_collection(client, "docs")
config = col.configuration_json["embedding_function"]["config"]
print(json.dumps({"metadata": col.metadata, "revision": config["revision"],
                  "loaded": get_model(col).revision}))
"""


def _hub_child(cache: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", HUB_CHILD, *args],
        env=hub_env(cache, offline=True),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_hub_model_is_recorded_and_reopened_at_its_commit(tmp_path, tiny_path, golden):
    from test_hub import cache_backbone

    tiny = Path(tiny_path)
    cache = tmp_path / "hub"
    cache_snapshot(cache, HUB_ID, COMMIT, checkpoint_files(tiny))
    cache_backbone(cache, tiny)
    db = str(tmp_path / "db")
    created = _hub_child(cache, "create", db, *golden["documents"])
    assert created["revision"] == created["loaded"] == COMMIT
    assert created["metadata"]["cde_rag_model_revision"] == COMMIT
    assert created["metadata"]["cde_rag_backbone"] == BACKBONE_ID
    assert created["metadata"]["cde_rag_backbone_revision"] == BACKBONE_COMMIT
    # `main` moves to a commit with other weights: the collection still loads its own commit.
    other = checkpoint_files(tiny)
    weights = tmp_path / "other.safetensors"
    from safetensors.torch import load_file, save_file

    save_file(
        {
            k: v * 1.01 if v.is_floating_point() else v
            for k, v in load_file(tiny / "model.safetensors").items()
        },
        weights,
        metadata={"format": "pt"},
    )
    other["model.safetensors"] = weights
    cache_snapshot(cache, HUB_ID, OLDER, other, ref=None)
    (cache / f"models--{HUB_ID.replace('/', '--')}" / "refs" / "main").write_text(OLDER)
    reopened = _hub_child(cache, "open", db)
    assert reopened["loaded"] == COMMIT


# -- collections written by the previous version ----------------------------------------------


def _write_previous_format(client, name: str, model: CDEModel, texts: list[str]) -> str:
    """A collection as cde-rag wrote it before contexts had a recipe fingerprint: the context's
    "fingerprint" is the checksum of its numbers (with the old model fingerprint), and neither
    the config nor the companion has a checksum key. Returns that fingerprint."""
    legacy_model = model.checkpoint.legacy_fingerprint
    fitted = model.fit_context(texts)
    old = type(fitted)(
        embeddings=fitted.embeddings,
        model_name=fitted.model_name,
        model_fingerprint=legacy_model,
        kind=fitted.kind,
        minicorpus=fitted.minicorpus,
        seed=fitted.seed,
        source_size=fitted.source_size,
        created_at=fitted.created_at,
    )
    old_fingerprint = numbers_checksum(legacy_model, fitted.embeddings)
    assert old.checksum == old_fingerprint != old.fingerprint
    store_name = f"{name}-cde-context-{old_fingerprint[:16]}"
    write_context(client, store_name, old)
    companion = client.get_collection(store_name, embedding_function=None)
    meta = {
        k: v
        for k, v in companion.metadata.items()
        if k not in (CHECKSUM_KEY, "cde_rag_model_revision", "cde_rag_fit_dtype")
    }
    companion.modify(metadata={**meta, FINGERPRINT_KEY: old_fingerprint})
    ef = CDEEmbeddingFunction(
        str(Path(model.name).resolve()),
        context_fingerprint=old_fingerprint,
        model_fingerprint=legacy_model,
        context_collection=store_name,
        tenant="default_tenant",
        database="default_database",
    )
    client.create_collection(
        name, embedding_function=ef, configuration={"hnsw": {"space": "cosine"}}
    )
    vectors = model.embed_documents(texts, context=fitted)
    client.get_collection(name, embedding_function=None).add(
        ids=[f"d{i}" for i in range(len(texts))], embeddings=vectors, documents=texts
    )
    return old_fingerprint


def test_a_collection_of_the_previous_format_still_opens(client, tiny_model, golden, fresh_cache):
    texts = golden["documents"]
    old_fingerprint = _write_previous_format(client, "old", tiny_model, texts)
    config = dict(_config(client.get_collection("old", embedding_function=None)))
    assert "context_checksum" not in config

    col = open_collection(client, "old")
    ctx = get_context(col)
    assert ctx.checksum == old_fingerprint and ctx.matches(old_fingerprint)
    assert get_model(client.get_collection("old")) is not None  # old model fingerprint accepted
    new = create_collection(client, "new", model=tiny_model, corpus=texts)
    add_documents(new, texts, ids=[f"d{i}" for i in range(len(texts))])
    for query in golden["queries"]:
        assert _ranking(col, query) == _ranking(new, query)
        assert _ranking(client.get_collection("old"), query) == _ranking(new, query)
    assert add_documents(col, ["A new note about rivers."]).added == 1
    # The old record is kept as it was: reopening it later is the same as now.
    assert dict(_config(client.get_collection("old", embedding_function=None))) == config
    store_module._CONTEXTS.clear()
    assert get_context(open_collection(client, "old")).checksum == old_fingerprint
    np.testing.assert_array_equal(get_context(col).embeddings, get_context(new).embeddings)
