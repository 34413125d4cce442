"""`POST /v1/contexts/{id}/drift` on a real `cde-rag serve` (issue 15): the drift of a client's
documents from a stored context, as `cde_rag.drift` computes it in-process, about 0 for the
documents the context was fitted on and above the threshold for another topic; bounded by the
server's limits, with a clear 4xx for every bad request, and no side effect."""

from __future__ import annotations

import httpx
import pytest
from server_process import ServerProcess
from topic_texts import CODE, RIVERS, prose

from cde_rag.drift import REFIT_THRESHOLD, measure_drift

pytestmark = pytest.mark.server

MAX_INPUTS = 100
MAX_TOKENS = 20000


@pytest.fixture(scope="module")
def server(tiny_path, tmp_path_factory):
    srv = ServerProcess(tiny_path, tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("log"))
    srv.start("--max-inputs", str(MAX_INPUTS), "--max-tokens", str(MAX_TOKENS))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def rivers(http, tiny_model):
    """A stored context fitted on 60 river texts, and the same context in-process."""
    docs = prose(RIVERS, 60, seed=0)
    created = http.post("/v1/contexts", json={"id": "rivers", "documents": docs, "seed": 3})
    assert created.status_code == 201, created.text
    context = tiny_model.fit_context(docs, seed=3)
    assert created.json()["fingerprint"] == context.fingerprint
    return docs, context


def drift(http, context_id: str, documents, **extra) -> httpx.Response:
    return http.post(f"/v1/contexts/{context_id}/drift", json={"documents": documents, **extra})


def test_drift_is_about_zero_for_the_contexts_own_documents(http, rivers, tiny_model):
    docs, context = rivers
    got = drift(http, "rivers", docs)
    assert got.status_code == 200, got.text
    body = got.json()
    expected = measure_drift(tiny_model, context, docs, population=len(docs))
    assert body["drift"] == pytest.approx(expected, abs=1e-6)
    assert body["drift"] < REFIT_THRESHOLD / 2
    assert body == {
        "object": "context.drift",
        "id": "rivers",
        "fingerprint": context.fingerprint,
        "drift": body["drift"],
        "sampled": 60,
        "population": 60,
        "threshold": REFIT_THRESHOLD,
        "refit_recommended": False,
        "advice": f"Drift {body['drift']:.3f} is within {REFIT_THRESHOLD}: the context still fits.",
    }
    # Ids are case-insensitive, as everywhere else.
    assert drift(http, "RIVERS", docs).json()["drift"] == body["drift"]


def test_drift_is_high_for_another_topic_and_recommends_a_refit(http, rivers, tiny_model):
    docs, context = rivers
    code = prose(CODE, 60, seed=1)
    body = drift(http, "rivers", code).json()
    assert body["drift"] == pytest.approx(
        measure_drift(tiny_model, context, code, population=60), rel=1e-5
    )
    assert body["drift"] > 10 * REFIT_THRESHOLD and body["refit_recommended"]
    assert "POST /v1/contexts" in body["advice"] and "re-embed" in body["advice"]
    # Half the corpus replaced lies in between.
    half = drift(http, "rivers", docs[:30] + code[:30]).json()["drift"]
    assert REFIT_THRESHOLD < half < body["drift"]


def test_a_sample_of_a_larger_corpus_takes_its_noise_out(http, rivers, tiny_model):
    docs, context = rivers
    sample = docs[::4]
    got = drift(http, "rivers", sample, population=len(docs)).json()
    assert (got["sampled"], got["population"]) == (15, 60)
    expected = measure_drift(tiny_model, context, sample, population=len(docs))
    assert got["drift"] == pytest.approx(expected, abs=1e-6)
    # Taken as the whole corpus, the same 15 carry their sampling noise: a higher score.
    assert drift(http, "rivers", sample).json()["drift"] >= got["drift"]


def test_the_default_context_is_scored_too(http, rivers):
    body = drift(http, "default", rivers[0][:5]).json()
    assert body["id"] == "default" and body["sampled"] == 5 and body["drift"] >= 0


@pytest.mark.parametrize(
    ("context_id", "body", "status", "param", "code"),
    [
        ("nope", {"documents": ["a text"]}, 404, "context_id", "context_not_found"),
        ("bad id!", {"documents": ["a text"]}, 400, "context_id", "invalid_context_id"),
        ("rivers", {"documents": []}, 400, "documents", None),
        ("rivers", {"documents": ["fine", "  "]}, 400, "documents[1]", None),
        ("rivers", {}, 400, "documents", None),
        ("rivers", {"documents": ["a", "b"], "population": 1}, 400, "population", None),
        ("rivers", {"documents": ["a"], "population": 0}, 400, "population", None),
        ("rivers", {"documents": ["a"], "seed": 1}, 400, "seed", None),
        ("rivers", {"documents": ["x"] * (MAX_INPUTS + 1)}, 400, "documents", "too_many_inputs"),
        ("rivers", {"documents": ["word " * 600] * 40}, 400, "documents", "max_tokens_per_request"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(
    http, rivers, context_id, body, status, param, code
):
    before = http.get("/v1/contexts").json()
    got = http.post(f"/v1/contexts/{context_id}/drift", json=body)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert error["param"] == param and error["code"] == code, error
    assert error["message"]
    assert http.get("/v1/contexts").json() == before
    assert drift(http, "rivers", rivers[0][:3]).status_code == 200  # still serving


def test_the_openapi_document_lists_the_drift_route(http):
    doc = http.get("/openapi.json").json()
    operation = doc["paths"]["/v1/contexts/{context_id}/drift"]["post"]
    assert set(operation["responses"]) == {"200", "400", "404", "413", "500"}
    request = doc["components"]["schemas"]["DriftRequest"]
    assert request["properties"]["documents"]["anyOf"][1]["maxItems"] == MAX_INPUTS
    assert request["required"] == ["documents"]
