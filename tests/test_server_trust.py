"""`cde-rag serve` under hostile and careless use (issue 12, server part): every bad request
gets a 4xx that names what is wrong, fails alone, and leaves the server and its store intact.

Real servers only: uvicorn in a thread of the test process (sharing the tiny model) where the
test needs no command-line option, `cde-rag serve` in a subprocess where it does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from server_process import ServerProcess, ThreadServer

from cde_rag.context_store import ContextNotFoundError, ContextStore, InvalidContextIdError
from cde_rag.server import RequestLimits, create_app

pytestmark = pytest.mark.server

TOL = 1e-5
KEY = "sk-trust-test"


def _app(model, data_dir: Path, **options):
    return create_app(model, data_dir=data_dir, max_wait=0.05, **options)


@pytest.fixture(scope="module")
def open_server(tiny_model, tmp_path_factory):
    """No API key, default limits: the `cde-rag serve` most people run on their machine."""
    with ThreadServer(_app(tiny_model, tmp_path_factory.mktemp("open"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def fallback(tiny_model):
    return tiny_model.fallback_context()


def _post(url: str, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        url + path,
        content=raw,
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
    )


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _assert_serving(url: str) -> None:
    response = httpx.post(
        f"{url}/v1/embeddings", json={"model": "cde-small-v2", "input": "still here"}, timeout=60
    )
    assert response.status_code == 200, response.text


def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


# -- item 5: text the tokenizer cannot take ------------------------------------------------------

EMBED = '"model": "cde-small-v2", "input": ["fine"]'


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", '{"model": "cde-small-v2", "input": ["ok", "a\\ud800b"]}', "input[1]"),
        ("/v1/embeddings", '{"model": "cde-small-v2", "input": "\\udfff"}', "input"),
        ("/v1/embeddings", '{"model": "cde-\\ud800", "input": ["ok"]}', "model"),
        ("/v1/embeddings", "{" + EMBED + ', "user": "\\ud800"}', "user"),
        ("/v1/embeddings", "{" + EMBED + ', "context": "x\\udc00"}', "context"),
        ("/v1/embeddings", "{" + EMBED + ', "input_type": "\\ud800"}', "input_type"),
        ("/v1/embeddings", "{" + EMBED + ', "encoding_format": "\\ud800"}', "encoding_format"),
        ("/v1/embeddings", "{" + EMBED + ', "\\ud800": 1}', None),
        ("/v1/contexts", '{"documents": ["ok", "\\ud800"]}', "documents[1]"),
        ("/v1/contexts", '{"id": "\\ud800", "documents": ["ok"]}', "id"),
    ],
)
def test_lone_surrogate_in_any_string_is_400_naming_where(open_server, path, body, param):
    error = _error(_post(open_server.url, path, body.encode()), 400)
    assert "lone UTF-16 surrogate" in error["message"], error
    assert error["param"] == param and error["code"] == "invalid_text"
    assert error["message"].startswith(f"'{param}'" if param else "A key of the request body")
    _assert_serving(open_server.url)


# -- item 6: one bad request fails alone ----------------------------------------------------------


def test_one_bad_request_among_eight_good_ones_fails_alone(open_server, tiny_model, fallback):
    texts = [f"good text number {i}" for i in range(8)]
    bodies = [json.dumps({"model": "cde-small-v2", "input": [t]}).encode() for t in texts]
    bodies.insert(4, b'{"model": "cde-small-v2", "input": ["fine", "\\ud800"]}')
    barrier = threading.Barrier(len(bodies))

    def call(body: bytes) -> httpx.Response:
        barrier.wait()
        return _post(open_server.url, "/v1/embeddings", body)

    before = httpx.get(f"{open_server.url}/v1/stats").json()
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(call, bodies))
    after = httpx.get(f"{open_server.url}/v1/stats").json()
    bad = responses.pop(4)
    assert _error(bad, 400)["param"] == "input[1]"
    assert [r.status_code for r in responses] == [200] * 8
    got = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(
        got, tiny_model.embed_documents(texts, context=fallback), atol=TOL, rtol=0
    )
    # The good ones still shared model calls: validation happens before a request is queued.
    assert after["model_calls"] - before["model_calls"] < 8


class _FailsOn:
    """The real tiny model, except that any call whose texts include `poison` raises: a stand-in
    for a failure only the model call finds (out of memory, a kernel error), which no
    validation can catch before a request joins a batch."""

    def __init__(self, model, poison: str):
        self._model = model
        self._poison = poison
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def embed(self, texts, **kwargs):
        self.calls.append(len(texts))
        if self._poison in texts:
            raise RuntimeError("simulated failure inside the model call")
        return self._model.embed(texts, **kwargs)


def test_a_failing_merged_call_is_rerun_per_request(tiny_model, fallback):
    import asyncio

    from cde_rag.batching import MicroBatcher

    model = _FailsOn(tiny_model, "poison")
    jobs = [["alpha", "beta"], ["poison"], ["gamma"], ["delta", "epsilon"]]

    async def main():
        batcher = MicroBatcher(model, max_wait=0.05)
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.embed(t, context=fallback, input_type="query") for t in jobs),
                return_exceptions=True,
            ), batcher.stats
        finally:
            await batcher.close()

    results, stats = asyncio.run(main())
    assert isinstance(results[1], RuntimeError)
    for i in (0, 2, 3):
        vectors, tokens = results[i]
        np.testing.assert_allclose(
            vectors, tiny_model.embed_queries(jobs[i], context=fallback), atol=TOL, rtol=0
        )
        assert tokens == tiny_model.count_tokens(jobs[i], "query")
    # One merged call of all 6 texts failed; then each request ran alone.
    assert model.calls == [6, 2, 1, 1, 2]
    assert (stats.requests, stats.failed_requests, stats.rerun_batches) == (3, 1, 1)


def test_keep_alive_connection_stays_usable_after_every_error(tiny_model, tmp_path, golden):
    app = _app(tiny_model, tmp_path, api_key=KEY, limits=RequestLimits(max_body_bytes=65536))
    good = {"model": "cde-small-v2", "input": "fine"}
    auth = {"Authorization": f"Bearer {KEY}"}
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, headers=auth) as http:
        taken = http.post("/v1/contexts", json={"id": "taken", "documents": golden["minicorpus"]})
        assert taken.status_code == 201
        errors = [
            (400, "POST", "/v1/embeddings", {"content": b"{not json"}),
            (400, "POST", "/v1/embeddings", {"json": {"input": "no model"}}),
            (400, "POST", "/v1/embeddings", {"content": b'{"model": "x", "input": "\\ud800"}'}),
            (400, "POST", "/v1/embeddings", {"json": good, "headers": {"Host": "evil.example"}}),
            (401, "POST", "/v1/embeddings", {"json": good, "headers": {"Authorization": "x"}}),
            (404, "POST", "/v1/embeddings", {"json": {**good, "model": "nope"}}),
            (404, "GET", "/v1/contexts/nope", {}),
            (405, "PUT", "/v1/contexts/taken", {}),
            (409, "POST", "/v1/contexts", {"json": {"id": "taken", "documents": ["other"]}}),
            (413, "POST", "/v1/embeddings", {"json": {**good, "input": "x" * 70_000}}),
        ]
        for status, method, path, kwargs in errors:
            first = http.post("/v1/embeddings", json=good)
            assert first.status_code == 200, first.text
            error = http.request(method, path, **kwargs)
            _error(error, status)
            after = http.post("/v1/embeddings", json=good)
            assert after.status_code == 200, (status, path, after.text)
            if error.headers.get("connection") == "close":
                assert status == 413, "only an unread body may end the connection"
            else:
                assert _local_port(after) == _local_port(first), (status, path)


# -- item 7: request size -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(tiny_path, tmp_path_factory):
    """`cde-rag serve` with small request limits and a proxy name it may be reached by."""
    srv = ServerProcess(
        tiny_path, tmp_path_factory.mktemp("limited"), tmp_path_factory.mktemp("logs")
    )
    srv.start(
        "--max-inputs",
        "4",
        "--max-tokens",
        "40",
        "--max-body-mb",
        "0.5",
        "--allowed-host",
        "embeddings.internal",
    )
    yield srv
    srv.stop()


def test_request_limits_are_options_and_refused_before_the_model(limited_server, tiny_model):
    url = limited_server.url
    many = _post(
        url, "/v1/embeddings", json.dumps({"model": "cde-small-v2", "input": ["a"] * 5}).encode()
    )
    error = _error(many, 400)
    assert error["code"] == "too_many_inputs" and "at most 4" in error["message"]
    texts = ["lorem ipsum dolor sit amet"] * 4
    tokens = sum(tiny_model.count_tokens(texts))
    assert tokens > 40
    long = _post(
        url, "/v1/embeddings", json.dumps({"model": "cde-small-v2", "input": texts}).encode()
    )
    error = _error(long, 400)
    assert error["code"] == "max_tokens_per_request"
    assert f"{tokens} tokens" in error["message"] and "at most 40" in error["message"]
    # Declared too big: refused from the headers, before a byte of the body is read.
    declared = _post(url, "/v1/embeddings", b" " * 600_000)
    assert _error(declared, 413)["code"] == "request_too_large"
    assert "0.5 MiB" in declared.json()["error"]["message"]
    # Not declared (chunked): counted while it streams.
    chunked = _post(url, "/v1/embeddings", iter([b" " * 100_000] * 6))
    assert _error(chunked, 413)["code"] == "request_too_large"
    stats = httpx.get(f"{url}/v1/stats").json()
    assert stats["model_calls"] == 0
    _assert_serving(url)


def test_63_mb_body_is_refused_without_holding_it(tiny_path, tmp_path):
    srv = ServerProcess(tiny_path, tmp_path / "data", tmp_path)
    srv.start()
    try:
        body = json.dumps({"model": "cde-small-v2", "input": ["ab"] * 10_500_000}).encode()
        assert len(body) > 63_000_000
        before = srv.memory_mb()
        declared = _post(srv.url, "/v1/embeddings", body)
        chunks = (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))
        try:
            streamed = _post(srv.url, "/v1/embeddings", chunks)
        except httpx.TransportError:
            streamed = None  # the server may close the socket while the client still writes
        after, peak = srv.memory_mb(), srv.memory_mb("VmHWM")
        print(f"63 MB body: resident {before:.0f} MB -> {after:.0f} MB, peak {peak:.0f} MB")
        assert _error(declared, 413)["code"] == "request_too_large"
        assert streamed is None or _error(streamed, 413)["code"] == "request_too_large"
        # Unbounded, parsing it took this server from ~0.4 GB to 1.3 GB.
        assert peak - before < 100 and after - before < 50
        _assert_serving(srv.url)
    finally:
        srv.stop()


# -- item 8: context rows, NaN --------------------------------------------------------------------


@pytest.mark.parametrize("value", [3e38, 1e5, float("inf")])
def test_context_rows_that_would_give_nan_are_400(open_server, value):
    rows = [[value] + [0.0] * 63] + [[0.1] * 64] * 31
    raw = json.dumps({"embeddings": rows}).encode()  # inf is written as Infinity
    error = _error(_post(open_server.url, "/v1/contexts", raw), 400)
    assert error["param"] == "embeddings" and error["code"] == "invalid_context_embeddings"
    assert "NaN" in error["message"]


def test_stored_context_with_huge_rows_is_reported_unusable_at_start(
    tiny_model, tiny_context, tmp_path
):
    contexts = tmp_path / "contexts"
    contexts.mkdir()
    path = tiny_context.save(contexts / "huge.safetensors")
    with open(path, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    tensors = load_file(path)
    tensors["embeddings"] = tensors["embeddings"] * np.float32(1e36)
    save_file(tensors, path, metadata=header["__metadata__"])
    with ThreadServer(_app(tiny_model, tmp_path)) as srv:
        listed = {c["id"]: c for c in httpx.get(f"{srv.url}/v1/contexts").json()["data"]}
        used = _post(
            srv.url, "/v1/embeddings", b'{"model": "cde-small-v2", "input": "x", "context": "huge"}'
        )
    assert listed["huge"]["usable"] is False and "norm" in listed["huge"]["error"]
    assert _error(used, 400)["code"] == "context_unusable"


def test_non_finite_vectors_are_a_500_never_nan_in_json(make_checkpoint, tmp_path):
    """Finite but absurd weights (NaN ones are refused at load) overflow inside the model: the
    engine's NumericalError is the server's fault, a 500, and fails only that request."""
    from cde_rag import CDEModel

    def overflow(weights):
        key = "second_stage_model.backbone.layers.3.mlp.Wo.weight"
        weights[key] = weights[key] * 1e38
        return weights

    model = CDEModel.from_pretrained(str(make_checkpoint("nan", edit_weights=overflow)))
    with ThreadServer(_app(model, tmp_path)) as srv:
        response = httpx.post(
            f"{srv.url}/v1/embeddings", json={"model": "cde-small-v2", "input": "x"}
        )
        health = httpx.get(f"{srv.url}/health")
    error = _error(response, 500)
    assert error["code"] == "non_finite_output" and error["type"] == "server_error"
    assert "NaN" in error["message"] and "texts[0]" in error["message"]
    assert health.status_code == 200


# -- item 9: DNS rebinding ----------------------------------------------------------------------


def test_forged_host_header_is_refused(open_server):
    port = open_server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "[::2]"):
        for method, path in (("GET", "/v1/contexts"), ("DELETE", "/v1/contexts/x")):
            response = httpx.request(method, f"{open_server.url}{path}", headers={"Host": host})
            assert _error(response, 400)["code"] == "host_not_allowed", host
    for host in ("localhost", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST."):
        response = httpx.get(f"{open_server.url}/v1/contexts", headers={"Host": host})
        assert response.status_code == 200, host


def test_allowed_host_option_admits_a_proxy_name(limited_server):
    proxied = httpx.get(
        f"{limited_server.url}/v1/contexts", headers={"Host": "embeddings.internal:443"}
    )
    assert proxied.status_code == 200
    other = httpx.get(f"{limited_server.url}/v1/contexts", headers={"Host": "evil.example"})
    assert _error(other, 400)["code"] == "host_not_allowed"
    assert "--allowed-host" in other.json()["error"]["message"]


# -- item 14: full disk -------------------------------------------------------------------------


def _private_tmpfs_wrapper(folder: Path, size_kb: int) -> list[str] | None:
    """A command prefix that runs the server with `folder` on its own small tmpfs, in a private
    mount namespace (no root needed where user namespaces are allowed); None where impossible."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["--mount"], ["--mount", "--map-root-user"]):
        probe = subprocess.run(
            [unshare, *flags, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {folder}"],
            capture_output=True,
        )
        if probe.returncode == 0:
            mount = f"mount -t tmpfs -o size={size_kb}k tmpfs {folder}"
            return [unshare, *flags, "sh", "-c", f'{mount} && exec "$@"', "sh"]
    return None


def test_full_disk_while_storing_a_context_is_507_and_the_store_stays_consistent(
    tiny_path, tmp_path, golden
):
    data = tmp_path / "data"
    data.mkdir()
    wrapper = _private_tmpfs_wrapper(data, 512)
    if wrapper is None:
        pytest.skip("cannot mount a private tmpfs here (no unshare or user namespaces)")
    srv = ServerProcess(tiny_path, data, tmp_path, wrapper=wrapper)
    srv.start()
    try:
        # The server's own view of --data: its private tmpfs, seen through /proc.
        seen = Path(f"/proc/{srv.proc.pid}/root") / str(data).lstrip("/")
        stored = seen / "contexts"
        first = httpx.post(
            f"{srv.url}/v1/contexts", json={"id": "first", "documents": golden["minicorpus"]}
        )
        assert first.status_code == 201, first.text
        filler = seen / "filler"
        with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError, match="No space"):
            while True:
                fh.write(b"\0" * 4096)
        full = httpx.post(
            f"{srv.url}/v1/contexts",
            json={"id": "second", "documents": golden["documents"], "seed": 5},
            timeout=60,
        )
        error = _error(full, 507)
        assert error["code"] == "insufficient_storage"
        assert "No space left" in error["message"]
        assert str(data / "contexts" / "second.safetensors") in error["message"]
        assert sorted(p.name for p in stored.iterdir()) == ["first.safetensors"]
        listed = httpx.get(f"{srv.url}/v1/contexts").json()["data"]
        assert [c["id"] for c in listed] == ["default", "first"]
        _assert_serving(srv.url)

        filler.unlink()
        again = httpx.post(
            f"{srv.url}/v1/contexts",
            json={"id": "second", "documents": golden["documents"], "seed": 5},
            timeout=60,
        )
        assert again.status_code == 201, again.text
        assert sorted(p.name for p in stored.iterdir()) == [
            "first.safetensors",
            "second.safetensors",
        ]
    finally:
        srv.stop()


# -- item 15: smaller -----------------------------------------------------------------------------


def test_health_and_models_name_the_model_without_its_path(open_server, tiny_path):
    path = str(Path(tiny_path).resolve())
    health = httpx.get(f"{open_server.url}/health")
    assert health.json() == {"status": "ok", "model": "tiny-cde-v2"}
    for route in ("/v1/models", "/v1/contexts", "/v1/contexts/default", "/openapi.json"):
        text = httpx.get(f"{open_server.url}{route}").text
        assert path not in text and tiny_path not in text, route


def test_context_ids_are_case_insensitive(open_server, golden):
    url = open_server.url
    created = httpx.post(
        f"{url}/v1/contexts", json={"id": "MyCorpus", "documents": golden["minicorpus"]}
    )
    assert created.status_code == 201 and created.json()["id"] == "mycorpus"
    for spelling in ("mycorpus", "MYCORPUS", "MyCorpus"):
        got = httpx.get(f"{url}/v1/contexts/{spelling}")
        assert got.status_code == 200 and got.json()["id"] == "mycorpus"
    clash = httpx.post(f"{url}/v1/contexts", json={"id": "MYCORPUS", "documents": ["other"]})
    assert _error(clash, 409)["code"] == "context_exists"
    reserved = httpx.post(f"{url}/v1/contexts", json={"id": "DEFAULT", "documents": ["x"]})
    assert _error(reserved, 400)["param"] == "id"
    assert _error(httpx.delete(f"{url}/v1/contexts/Default"), 400)["param"] == "context_id"
    assert httpx.get(f"{url}/v1/contexts/DEFAULT").json()["id"] == "default"
    assert httpx.delete(f"{url}/v1/contexts/MYCORPUS").json()["id"] == "mycorpus"
    assert httpx.get(f"{url}/v1/contexts/mycorpus").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"model": "cde-small-v2", "input": ["ok", " \t\n"]}, "input[1]"),
        ("/v1/embeddings", {"model": "cde-small-v2", "input": "\u3000"}, "input"),
        ("/v1/contexts", {"documents": ["ok", "   "]}, "documents[1]"),
    ],
)
def test_whitespace_only_texts_are_refused_with_the_item_named(open_server, path, body, param):
    error = _error(httpx.post(f"{open_server.url}{path}", json=body), 400)
    assert error["param"] == param
    assert "whitespace only" in error["message"]


# -- issue 16: the store speaks in domain errors --------------------------------------------------


def test_context_store_raises_domain_errors_not_http_ones(tiny_model, tmp_path):
    from starlette.exceptions import HTTPException

    store = ContextStore(tiny_model, tmp_path)
    with pytest.raises(ContextNotFoundError) as missing:
        store.get("nope")
    with pytest.raises(InvalidContextIdError) as invalid:
        store.get("../x")
    for err in (missing.value, invalid.value):
        assert not isinstance(err, HTTPException)


def test_public_names_of_the_server_module_stay_importable():
    from cde_rag import server

    for name in server.__all__:
        assert hasattr(server, name), name
    assert server.ContextStore is ContextStore
    with pytest.warns(DeprecationWarning), pytest.raises(server.APIError) as err:
        server.input_texts(["ok", "  "])
    assert err.value.status_code == 400 and err.value.param == "input[1]"
