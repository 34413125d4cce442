"""The server and context identity (issues 15 part 3, 13 part 2): a context's fingerprint is its
recipe and its checksum its exact numbers, so everything that depends on the numbers (batches,
stored ids, "the same context") follows the checksum; every field the server sends is in its
OpenAPI document; /v1/models names the hub commits loaded; contexts stored by cde-rag's context
format 1 still serve.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_process import ServerProcess, ThreadServer
from test_hub import BACKBONE_COMMIT, COMMIT, HUB_ID, hub_env
from test_hub import hub_cache as hub_cache  # the fixture: a hub cache laid out by hand

from cde_rag import CDEModel, CorpusContext
from cde_rag.context import LegacyContextWarning
from cde_rag.context_store import ContextExistsError, ContextStore
from cde_rag.server import create_app

pytestmark = pytest.mark.server

TOL = 1e-5
V1_FILE = Path(__file__).parent / "fixtures" / "context-v1.safetensors"


@pytest.fixture(scope="module")
def fits(tiny_path, tiny_model, golden) -> tuple[CorpusContext, CorpusContext]:
    """A float32 and a bfloat16 fit of one recipe: one fingerprint, two checksums."""
    exact = tiny_model.context(golden["minicorpus"])
    fast = CDEModel.from_pretrained(tiny_path, device="cpu", dtype="bfloat16").context(
        golden["minicorpus"]
    )
    assert fast.fingerprint == exact.fingerprint and fast.checksum != exact.checksum
    return exact, fast


def test_batcher_never_merges_two_fits_of_one_recipe(tiny_model, fits, golden):
    from test_server import _run_batcher

    exact, fast = fits
    text = golden["queries"][:2]
    jobs = [(text, exact, "query"), (text, fast, "query"), (text, exact, "query")]
    results, stats = _run_batcher(tiny_model, jobs, max_wait=0.05)
    assert (stats.model_calls, stats.requests, stats.largest_call_requests) == (2, 3, 2)
    for (texts, ctx, kind), (vectors, _) in zip(jobs, results):
        np.testing.assert_array_equal(
            vectors, tiny_model.embed(texts, context=ctx, input_type=kind)
        )
    assert not np.allclose(results[0][0], results[1][0], atol=1e-6)


def test_store_tells_two_fits_of_one_recipe_apart(tiny_model, fits, tmp_path):
    exact, fast = fits
    store = ContextStore(tiny_model, tmp_path)
    exact_id, _, created = store.add(exact, None)
    fast_id, _, created_fast = store.add(fast, None)
    assert created and created_fast and exact_id != fast_id
    # The same numbers again: the stored context, not a new one.
    assert store.add(CorpusContext.load(store.path(exact_id)), None) == (exact_id, exact, False)
    store.add(exact, "named")
    with pytest.raises(ContextExistsError, match="taken by another context"):
        store.add(fast, "named")
    assert store.get("named") == exact and store.get(fast_id) == fast


def test_every_field_the_server_sends_is_documented(tiny_model, tmp_path, golden):
    with ThreadServer(create_app(tiny_model, data_dir=tmp_path, max_wait=0.01)) as srv:
        http = httpx.Client(base_url=srv.url, timeout=60)
        doc = http.get("/openapi.json").json()
        schemas = doc["components"]["schemas"]
        created = http.post("/v1/contexts", json={"documents": golden["documents"]}).json()
        embedded = http.post(
            "/v1/embeddings",
            json={"model": "cde-small-v2", "input": "x", "context": created["id"]},
        ).json()
        model = http.get("/v1/models/cde-small-v2").json()
        default = http.get("/v1/contexts/default").json()
    expected = tiny_model.fit_context(golden["documents"])
    for ctx_info in (created, default):
        # Everything describe() knows, plus the API's own fields, and nothing undocumented.
        assert set(ctx_info) == {"object", "id", "usable", *expected.describe()}
        assert set(ctx_info) == set(schemas["ContextInfo"]["properties"])
    assert created["checksum"] == expected.checksum and created["fit_dtype"] == "float32"
    assert created["id"] == f"ctx-{expected.checksum[:16]}"
    assert embedded["context"] == {
        "id": created["id"],
        "fingerprint": expected.fingerprint,
        "checksum": expected.checksum,
        "kind": "fitted",
    }
    assert set(embedded["context"]) == set(schemas["ContextRef"]["properties"])
    assert set(model) == set(schemas["ModelInfo"]["properties"])
    assert (model["revision"], model["backbone_revision"]) == (None, None)  # a local folder


def test_models_route_names_the_hub_commits_it_loaded(hub_cache, tmp_path):
    """`cde-rag serve --model jxm/cde-small-v2` from a hub cache (offline): /v1/models and the
    contexts it fits record the commits loaded (issue 13 part 2)."""
    srv = ServerProcess(HUB_ID, tmp_path / "data", tmp_path)
    srv.start(env=hub_env(hub_cache, offline=True))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            (model,) = http.get("/v1/models").json()["data"]
            context = http.post("/v1/contexts", json={"documents": ["a", "b"]}).json()
    finally:
        srv.stop()
    assert (model["revision"], model["backbone_revision"]) == (COMMIT, BACKBONE_COMMIT)
    assert (context["model_revision"], context["backbone_revision"]) == (COMMIT, BACKBONE_COMMIT)


def test_contexts_stored_by_format_1_still_serve(tiny_model, tmp_path, golden):
    """A stored context and the cached default context, both as the previous cde-rag wrote
    them: loaded, served with their numbers and checksum, and nothing lost."""
    contexts, fallback = tmp_path / "contexts", tmp_path / "fallback"
    contexts.mkdir()
    fallback.mkdir()
    shutil.copy(V1_FILE, contexts / "old.safetensors")
    # The previous cde-rag cached the default context under the model's older fingerprint.
    legacy_default = fallback / f"{tiny_model.checkpoint.legacy_fingerprint}.safetensors"
    shutil.copy(V1_FILE, legacy_default)
    with pytest.warns(LegacyContextWarning):
        old = CorpusContext.load(V1_FILE)
    with pytest.warns(LegacyContextWarning, match="old.safetensors"):
        app = create_app(tiny_model, data_dir=tmp_path, max_wait=0.01)
    assert app.state.default_context == old
    # Saved again under today's name (format 2): the same numbers and checksum, no warning.
    resaved = CorpusContext.load(fallback / f"{tiny_model.fingerprint}.safetensors")
    assert resaved == old and resaved.checksum == old.checksum
    assert legacy_default.read_bytes() == V1_FILE.read_bytes()
    texts = golden["documents"][:3]
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        info = http.get("/v1/contexts/old").json()
        stored = http.post(
            "/v1/embeddings", json={"model": "cde-small-v2", "input": texts, "context": "old"}
        ).json()
        default = http.post("/v1/embeddings", json={"model": "cde-small-v2", "input": texts})
    assert info["usable"] is True and info["checksum"] == old.checksum
    expected = tiny_model.embed_documents(texts, context=old)
    for body in (stored, default.json()):
        assert body["context"]["checksum"] == old.checksum
        vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, expected, atol=TOL, rtol=0)
    assert (contexts / "old.safetensors").read_bytes() == V1_FILE.read_bytes()


def test_default_data_dir_is_the_shared_user_data_folder(monkeypatch, tmp_path):
    from cde_rag.server import default_data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "cde-rag" / "server"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # invalid by the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "cde-rag" / "server"
