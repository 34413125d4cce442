"""The OpenAPI document of `cde-rag serve` is a contract that generated clients and fuzzers can
trust (issue 12): every status and body the server sends is documented, request bodies are
typed with their limits, and schemathesis, driven by that document against a live server with
and without an API key, finds no server error and no undocumented status, content type or
body.
"""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest
from server_process import ServerProcess

pytestmark = pytest.mark.server

KEY = "sk-fuzz-test"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)
# Bounded: about 300 requests and 20-30 s per run on a busy 2-core machine.
MAX_EXAMPLES = 10
RUN_TIMEOUT = 240


@pytest.fixture(scope="module", params=["no key", "api key"])
def live_server(request, tiny_path, tmp_path_factory):
    srv = ServerProcess(tiny_path, tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("log"))
    srv.start(*(["--api-key", KEY] if request.param == "api key" else []))
    yield srv, request.param
    srv.stop()


def _headers(mode: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"} if mode == "api key" else {}


def test_openapi_documents_every_status_and_typed_bodies(live_server):
    srv, mode = live_server
    doc = httpx.get(f"{srv.url}/openapi.json", headers=_headers(mode)).json()
    statuses = {
        (method.upper(), path): set(op["responses"])
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    auth = {"401"} if mode == "api key" else set()
    assert statuses[("GET", "/health")] == {"200", "400", "500"}
    assert statuses[("POST", "/v1/embeddings")] == {"200", "400", "404", "413", "500"} | auth
    assert (
        statuses[("POST", "/v1/contexts")]
        == {
            "200",
            "201",
            "400",
            "409",
            "413",
            "500",
            "507",
        }
        | auth
    )
    assert statuses[("DELETE", "/v1/contexts/{context_id}")] == {"200", "400", "404", "500"} | auth
    drift = statuses[("POST", "/v1/contexts/{context_id}/drift")]
    assert drift == {"200", "400", "404", "413", "500"} | auth
    assert all("422" not in s for s in statuses.values())
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    error = schemas["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    for operation in (op for ops in doc["paths"].values() for op in ops.values()):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorResponse"
    text, array = schemas["EmbeddingRequest"]["properties"]["input"]["anyOf"]
    assert text == {"type": "string", "minLength": 1, "pattern": r"\S"}
    assert array["items"] == text and (array["minItems"], array["maxItems"]) == (1, 2048)
    documents = schemas["ContextRequest"]["properties"]["documents"]
    assert documents["anyOf"][0] == text
    rows = schemas["ContextRequest"]["properties"]["embeddings"]
    assert (rows["minItems"], rows["items"]["maxItems"]) == (32, 64)
    assert ("securitySchemes" in doc["components"]) == (mode == "api key")


def test_schemathesis_finds_nothing_against_a_live_server(live_server, tmp_path):
    srv, mode = live_server
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{srv.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "12",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    for name, value in _headers(mode).items():
        command += ["--header", f"{name}: {value}"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(f"schemathesis ({mode}):\n{summary}")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 100, summary
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
