"""`cde-rag serve` as clients see it: a real uvicorn process on 127.0.0.1, driven by the real
`openai` client, LangChain's `OpenAIEmbeddings` and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from server_process import ServerProcess

from cde_rag import CorpusContext
from cde_rag.batching import MicroBatcher
from cde_rag.errors import ContextMismatchError
from cde_rag.server import MAX_INPUTS, exposure_warning

pytestmark = pytest.mark.server

API_KEY = "sk-test-cde-rag-1"
TOL = 1e-5


@pytest.fixture(scope="module")
def server(tiny_path, tmp_path_factory):
    srv = ServerProcess(
        tiny_path, tmp_path_factory.mktemp("server-data"), tmp_path_factory.mktemp("logs")
    )
    srv.start("--api-key", API_KEY)
    yield srv
    srv.stop()


def _client(srv: ServerProcess, api_key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url=f"{srv.url}/v1", api_key=api_key, max_retries=0, timeout=60)


def _http(srv: ServerProcess, api_key: str | None = API_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=srv.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def fallback(tiny_model):
    return tiny_model.fallback_context()


def _vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def _assert_serving(srv: ServerProcess) -> None:
    """After any error, the server still answers a normal request."""
    out = _client(srv).embeddings.create(model="cde-small-v2", input="still here")
    assert len(out.data) == 1 and len(out.data[0].embedding) == 64


# -- happy paths -------------------------------------------------------------------------------


def test_health_needs_no_key_and_models_lists_the_served_name(server, tiny_model):
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = _client(server).models.list().data
    assert [m.id for m in models] == ["cde-small-v2"]
    extra = models[0].model_extra
    assert extra["fingerprint"] == tiny_model.fingerprint
    assert extra["dimensions"] == tiny_model.dim
    assert _client(server).models.retrieve("cde-small-v2").id == "cde-small-v2"


def test_documents_and_queries_equal_the_engine_with_the_default_context(
    server, tiny_model, fallback, golden
):
    client = _client(server)
    docs, queries = golden["documents"], golden["queries"]
    out = client.embeddings.create(model="cde-small-v2", input=docs, encoding_format="float")
    np.testing.assert_allclose(
        _vectors(out), tiny_model.embed_documents(docs, context=fallback), atol=TOL, rtol=0
    )
    assert [item.index for item in out.data] == list(range(len(docs)))
    assert out.usage.prompt_tokens == out.usage.total_tokens == sum(tiny_model.count_tokens(docs))
    assert out.model_extra["context"] == {
        "id": "default",
        "fingerprint": fallback.fingerprint,
        "checksum": fallback.checksum,
        "kind": "fallback",
    }

    q = client.embeddings.create(
        model="cde-small-v2",
        input=queries,
        encoding_format="float",
        extra_body={"input_type": "query"},
    )
    np.testing.assert_allclose(
        _vectors(q), tiny_model.embed_queries(queries, context=fallback), atol=TOL, rtol=0
    )
    assert q.usage.prompt_tokens == sum(tiny_model.count_tokens(queries, "query"))
    # Same text as document and as query differ: the switch reaches the model.
    as_doc = client.embeddings.create(model="cde-small-v2", input=queries[0])
    assert not np.allclose(_vectors(as_doc)[0], _vectors(q)[0], atol=1e-3)


def test_model_accepts_the_checkpoint_name_too(server, tiny_path):
    out = _client(server).embeddings.create(model=Path(tiny_path).name, input="x")
    assert out.model == Path(tiny_path).name


def test_base64_is_little_endian_float32_like_openai(server, golden):
    docs = golden["documents"][:3]
    floats = _vectors(
        _client(server).embeddings.create(model="cde-small-v2", input=docs, encoding_format="float")
    )
    with _http(server) as http:
        body = http.post(
            "/v1/embeddings",
            json={"model": "cde-small-v2", "input": docs, "encoding_format": "base64"},
        ).json()
    raw = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    )
    np.testing.assert_array_equal(raw, floats)
    # The openai client asks for base64 by default and decodes it itself.
    decoded = _vectors(_client(server).embeddings.create(model="cde-small-v2", input=docs))
    np.testing.assert_array_equal(decoded, floats)


def test_ten_megabyte_string_is_truncated_to_the_model_limit(server, tiny_model, fallback):
    text = "lorem ipsum dolor sit amet " * (10_000_000 // 27)
    out = _client(server).embeddings.create(
        model="cde-small-v2", input=[text, "short"], encoding_format="float"
    )
    assert out.usage.prompt_tokens == tiny_model.max_length + tiny_model.count_tokens(["short"])[0]
    np.testing.assert_allclose(
        _vectors(out),
        tiny_model.embed_documents([text, "short"], context=fallback),
        atol=TOL,
        rtol=0,
    )


# -- contexts ----------------------------------------------------------------------------------


def test_context_fitted_over_http_equals_the_engines(server, tiny_model, golden):
    client = _client(server)
    with _http(server) as http:
        created = http.post("/v1/contexts", json={"documents": golden["documents"], "seed": 7})
        assert created.status_code == 201, created.text
        info = created.json()
        expected = tiny_model.fit_context(golden["documents"], seed=7)
        assert info["fingerprint"] == expected.fingerprint
        assert info["kind"] == "fitted" and info["seed"] == 7
        assert info["source_size"] == len(golden["documents"])
        # Fitting the same documents again names the same context.
        again = http.post("/v1/contexts", json={"documents": golden["documents"], "seed": 7})
        assert again.status_code == 200 and again.json()["id"] == info["id"]

        out = client.embeddings.create(
            model="cde-small-v2",
            input=golden["queries"],
            encoding_format="float",
            extra_body={"input_type": "query", "context": info["id"]},
        )
        np.testing.assert_allclose(
            _vectors(out),
            tiny_model.embed_queries(golden["queries"], context=expected),
            atol=TOL,
            rtol=0,
        )
        assert out.model_extra["context"]["id"] == info["id"]
        assert out.model_extra["context"]["fingerprint"] == expected.fingerprint

        listed = http.get("/v1/contexts").json()["data"]
        assert [c["id"] for c in listed][:1] == ["default"]
        assert info["id"] in {c["id"] for c in listed}
        assert http.get(f"/v1/contexts/{info['id']}").json()["fingerprint"] == info["fingerprint"]

        deleted = http.delete(f"/v1/contexts/{info['id']}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert http.get(f"/v1/contexts/{info['id']}").status_code == 404
        assert not (server.data_dir / "contexts" / f"{info['id']}.safetensors").exists()
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(
            model="cde-small-v2", input="x", extra_body={"context": info["id"]}
        )
    assert err.value.body["code"] == "context_not_found"


def test_context_from_first_stage_embeddings_reproduces_the_golden_vectors(
    server, tiny_model, tiny_context, golden
):
    with _http(server) as http:
        created = http.post(
            "/v1/contexts",
            json={"id": "golden", "embeddings": tiny_context.embeddings.tolist()},
        )
        assert created.status_code == 201, created.text
        # The same numbers (checksum) as the fitted context; given numbers are their own
        # recipe, so the fingerprint is that of a context made from them.
        assert created.json()["checksum"] == tiny_context.checksum
        given = tiny_model.context_from_embeddings(tiny_context.embeddings)
        assert created.json()["fingerprint"] == given.fingerprint != tiny_context.fingerprint
        assert created.json()["kind"] == "embeddings"

        # The id is taken by this context: another one under it is a conflict, not an overwrite.
        other = np.roll(tiny_context.embeddings, 1, axis=0).tolist()
        clash = http.post("/v1/contexts", json={"id": "golden", "embeddings": other})
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "context_exists"
        assert http.get("/v1/contexts/golden").json()["checksum"] == tiny_context.checksum

        wrong = http.post("/v1/contexts", json={"embeddings": [[0.0] * 64] * 31})
        assert (
            wrong.status_code == 400 and "32 rows of 64 numbers" in wrong.json()["error"]["message"]
        )
        both = http.post("/v1/contexts", json={"embeddings": other, "documents": ["a"]})
        assert both.status_code == 400 and "either" in both.json()["error"]["message"]
        bad_doc = http.post("/v1/contexts", json={"documents": ["a", None]})
        assert bad_doc.status_code == 400
        assert bad_doc.json()["error"]["message"] == "documents[1] is null, not a string."
        sneaky = http.post("/v1/contexts", json={"id": "../../evil", "documents": ["a"]})
        assert sneaky.status_code == 400
        assert sneaky.json()["error"]["code"] == "invalid_context_id"
        assert http.delete("/v1/contexts/default").status_code == 400
        reserved = http.post("/v1/contexts", json={"id": "default", "documents": ["a"]})
        assert reserved.status_code == 400 and reserved.json()["error"]["param"] == "id"

    client = _client(server)
    for texts, kind, key in (
        (golden["documents"], "document", "document_embeddings"),
        (golden["queries"], "query", "query_embeddings"),
    ):
        out = client.embeddings.create(
            model="cde-small-v2",
            input=texts,
            extra_body={"input_type": kind, "context": "golden"},
        )
        np.testing.assert_allclose(_vectors(out), golden[key], atol=TOL, rtol=0)
    assert sorted(p.name for p in (server.data_dir / "contexts").iterdir()) == [
        "golden.safetensors"
    ]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": []}, "'input' is empty"),
        ({"input": ["fine", ""]}, "input[1] is an empty string"),
        ({"input": ["fine", None]}, "input[1] is null, not a string."),
        ({"input": ["fine", 3.5]}, "input[1] is a number, not a string."),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, f"at most {MAX_INPUTS} are allowed"),
        ({"input": [15339, 1917]}, "Token arrays are not supported"),
        ({"input": [[15339, 1917]]}, "Token arrays are not supported"),
        ({"input": {"text": "x"}}, "must be a string or a list of strings, not an object"),
        ({"input": "x", "extra_body": {"input_type": "passage"}}, "'input_type'"),
        ({"input": "x", "extra_body": {"inputtype": "query"}}, "Unrecognized request argument"),
        ({"input": "x", "extra_body": {"context": "../../etc/passwd"}}, "Invalid context id"),
        ({"input": "x", "dimensions": 32}, "'dimensions' must be 64"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(server, kwargs, message):
    with pytest.raises(openai.BadRequestError) as err:
        _client(server).embeddings.create(model="cde-small-v2", **kwargs)
    assert err.value.status_code == 400
    assert set(err.value.body) == {"message", "type", "param", "code"}
    assert message in err.value.body["message"]
    assert err.value.body["type"] == "invalid_request_error"
    _assert_serving(server)


def test_unknown_model_and_context_are_404(server):
    client = _client(server)
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert err.value.body["code"] == "model_not_found"
    assert "text-embedding-3-small" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="cde-small-v2", input="x", extra_body={"context": "nope"})
    assert err.value.body["code"] == "context_not_found"
    assert err.value.body["param"] == "context"
    _assert_serving(server)


def test_wrong_or_missing_api_key_is_401_on_every_route_but_health(server):
    with pytest.raises(openai.AuthenticationError) as err:
        _client(server, api_key="sk-wrong").embeddings.create(model="cde-small-v2", input="x")
    assert err.value.body["code"] == "invalid_api_key"
    assert err.value.body["message"] == "Incorrect API key provided."
    with _http(server, api_key=None) as http:
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/v1/contexts"),
            ("POST", "/v1/contexts"),
            ("DELETE", "/v1/contexts/golden"),
            ("GET", "/v1/stats"),
            ("GET", "/docs"),
        ]:
            response = http.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["message"].startswith("Missing API key")
        assert http.get("/health").status_code == 200
    _assert_serving(server)


def test_malformed_bodies_are_400_in_openai_shape(server):
    with _http(server) as http:
        for content in (b"{not json", b"[1, 2]", b"null", "\udcff".encode(errors="surrogatepass")):
            response = http.post(
                "/v1/embeddings", content=content, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, content
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        missing = http.post("/v1/embeddings", json={"input": "x"})
        assert missing.json()["error"]["message"] == "Missing required parameter: 'model'."
        # A body over the limit is refused while it streams, before it fills memory.
        chunks = (b" " * (1 << 20) for _ in range(65))
        big = http.post(
            "/v1/embeddings", content=chunks, headers={"Content-Type": "application/json"}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    _assert_serving(server)


# -- batching ----------------------------------------------------------------------------------


def test_concurrent_requests_share_model_calls_and_match_unbatched_results(
    server, tiny_model, fallback, golden
):
    texts = golden["documents"][:5] + golden["queries"][:3]
    jobs = [(text, kind) for text in texts for kind in ("document", "query")]
    with _http(server) as http:
        before = http.get("/v1/stats").json()
        start = threading.Barrier(len(jobs))

        def call(job: tuple[str, str]) -> np.ndarray:
            text, kind = job
            start.wait()
            response = http.post(
                "/v1/embeddings",
                json={"model": "cde-small-v2", "input": text, "input_type": kind},
            )
            response.raise_for_status()
            return np.array(response.json()["data"][0]["embedding"], dtype=np.float32)

        with ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(call, jobs))
        after = http.get("/v1/stats").json()

    requests = after["requests"] - before["requests"]
    calls = after["model_calls"] - before["model_calls"]
    assert requests == len(jobs)
    assert calls < len(jobs) / 2, (calls, len(jobs))
    assert after["largest_call_requests"] > 1
    for (text, kind), vector in zip(jobs, got):
        alone = tiny_model.embed([text], context=fallback, input_type=kind)[0]
        np.testing.assert_allclose(vector, alone, atol=TOL, rtol=0)


def _run_batcher(model, jobs, **options):
    """Submit all jobs at once to a fresh MicroBatcher; returns (results or exceptions, stats)."""

    async def main():
        batcher = MicroBatcher(model, **options)
        await batcher.start()
        try:
            results = await asyncio.gather(
                *(batcher.embed(texts, context=ctx, input_type=kind) for texts, ctx, kind in jobs),
                return_exceptions=True,
            )
        finally:
            await batcher.close()
        return results, batcher.stats

    return asyncio.run(main())


def test_batcher_takes_whole_requests_up_to_max_texts(tiny_model, fallback, golden):
    docs = golden["documents"]
    jobs = [(docs[0:2], fallback, "document"), (docs[2:4], fallback, "document")]
    jobs += [(docs[4:6], fallback, "document"), (docs[:9], fallback, "document")]
    results, stats = _run_batcher(tiny_model, jobs, max_wait=0.05, max_texts=4)
    # [2 + 2], then [2] (the 9 would overflow it), then the 9 alone: never split.
    assert (stats.model_calls, stats.requests, stats.largest_call_requests) == (3, 4, 2)
    for (texts, ctx, kind), (vectors, tokens) in zip(jobs, results):
        np.testing.assert_allclose(
            vectors, tiny_model.embed(texts, context=ctx, input_type=kind), atol=TOL, rtol=0
        )
        assert tokens == tiny_model.count_tokens(texts, kind)


def test_batcher_keeps_contexts_and_input_types_apart_and_survives_a_failing_batch(
    tiny_model, fallback, tiny_context, golden
):
    alien = CorpusContext(
        embeddings=tiny_context.embeddings,
        model_name="another-model",
        model_fingerprint="f" * 32,
        kind="embeddings",
    )
    text = golden["queries"][:1]
    jobs = [
        (text, fallback, "document"),
        (text, fallback, "query"),
        (text, tiny_context, "query"),
        (text, alien, "query"),
        (text, fallback, "document"),
    ]
    results, stats = _run_batcher(tiny_model, jobs, max_wait=0.05)
    assert isinstance(results[3], ContextMismatchError)
    assert stats.model_calls == 3 and stats.requests == 4 and stats.largest_call_requests == 2
    for i in (0, 1, 2, 4):
        texts, ctx, kind = jobs[i]
        np.testing.assert_allclose(
            results[i][0], tiny_model.embed(texts, context=ctx, input_type=kind), atol=TOL, rtol=0
        )
    assert not np.allclose(results[0][0], results[1][0], atol=1e-3)
    assert not np.allclose(results[1][0], results[2][0], atol=1e-3)


# -- LangChain -----------------------------------------------------------------------------------


def test_langchain_openai_embeddings_for_documents_and_queries(server, tiny_model, golden):
    from langchain_openai import OpenAIEmbeddings

    ctx = tiny_model.fit_context(golden["documents"], seed=11)
    with _http(server) as http:
        context_id = http.post(
            "/v1/contexts", json={"documents": golden["documents"], "seed": 11}
        ).json()["id"]
    common = {
        "model": "cde-small-v2",
        "base_url": f"{server.url}/v1",
        "api_key": API_KEY,
        "check_embedding_ctx_length": False,
        "max_retries": 0,
    }
    documents = OpenAIEmbeddings(**common, model_kwargs={"extra_body": {"context": context_id}})
    queries = OpenAIEmbeddings(
        **common, model_kwargs={"extra_body": {"context": context_id, "input_type": "query"}}
    )
    np.testing.assert_allclose(
        documents.embed_documents(golden["documents"]),
        tiny_model.embed_documents(golden["documents"], context=ctx),
        atol=TOL,
        rtol=0,
    )
    np.testing.assert_allclose(
        queries.embed_query(golden["queries"][0]),
        tiny_model.embed_queries(golden["queries"][:1], context=ctx)[0],
        atol=TOL,
        rtol=0,
    )


# -- restart (keep last: it restarts the module's server) ---------------------------------------


def test_contexts_survive_a_restart_and_the_key_comes_from_the_environment(
    server, tiny_context, golden, tmp_path
):
    with _http(server) as http:
        info = http.post(
            "/v1/contexts", json={"id": "kept", "documents": golden["minicorpus"], "seed": 3}
        ).json()
    before = _vectors(
        _client(server).embeddings.create(
            model="cde-small-v2", input=golden["documents"], extra_body={"context": "kept"}
        )
    )
    # Files this server cannot use: reported, never rewritten or silently dropped.
    stored = server.data_dir / "contexts"
    (stored / "broken.safetensors").write_bytes(b"not a context")
    alien = CorpusContext(
        embeddings=np.ones((32, 64), dtype=np.float32),
        model_name="another-model",
        model_fingerprint="f" * 32,
        kind="embeddings",
    )
    alien.save(stored / "alien.safetensors")
    alien_bytes = (stored / "alien.safetensors").read_bytes()
    default_path = tiny_context.save(tmp_path / "default.safetensors")

    server.stop()
    server.start("--context", str(default_path), env={"CDE_RAG_API_KEY": "sk-from-env"})
    assert "Context 'alien' is stored but unusable" in server.log
    assert "is listening on" not in server.log  # 127.0.0.1: no exposure warning
    with pytest.raises(openai.AuthenticationError):
        _client(server).models.list()
    client = _client(server, api_key="sk-from-env")
    with _http(server, api_key="sk-from-env") as http:
        again = http.get("/v1/contexts/kept").json()
        listed = {c["id"]: c for c in http.get("/v1/contexts").json()["data"]}
        clash = http.post("/v1/contexts", json={"id": "alien", "documents": ["x"]})
    assert again["fingerprint"] == info["fingerprint"] and again["seed"] == 3
    after = client.embeddings.create(
        model="cde-small-v2", input=golden["documents"], extra_body={"context": "kept"}
    )
    np.testing.assert_array_equal(_vectors(after), before)
    assert after.model_extra["context"]["fingerprint"] == info["fingerprint"]

    assert listed["default"]["fingerprint"] == tiny_context.fingerprint
    assert listed["kept"]["usable"] is True
    assert listed["broken"]["usable"] is False and "corrupted" in listed["broken"]["error"]
    assert listed["alien"]["usable"] is False and "another-model" in listed["alien"]["error"]
    assert clash.status_code == 409
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="cde-small-v2", input="x", extra_body={"context": "alien"})
    assert err.value.body["code"] == "context_unusable"
    assert (stored / "alien.safetensors").read_bytes() == alien_bytes
    assert (stored / "broken.safetensors").read_bytes() == b"not a context"

    # --context is the default now: plain requests get the golden vectors.
    plain = client.embeddings.create(model="cde-small-v2", input=golden["documents"])
    np.testing.assert_allclose(_vectors(plain), golden["document_embeddings"], atol=TOL, rtol=0)
    assert plain.model_extra["context"]["fingerprint"] == tiny_context.fingerprint


def test_cli_errors_are_one_line_and_exit_nonzero(tiny_path, tmp_path, capsys):
    from cde_rag.cli import main

    missing = tmp_path / "nope.safetensors"
    assert main(["serve", "--model", tiny_path, "--context", str(missing)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cde-rag serve: error: No context file at {missing}. Save one with ctx.save(path) or "
        "fit a new one with model.fit_context(corpus)."
    ]


def test_cli_rejects_a_bad_port_before_loading_anything(capsys):
    from cde_rag.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--port", "70000"])
    assert exit_.value.code == 2
    assert "port must be between 1 and 65535" in capsys.readouterr().err
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)


def test_exposure_warning_only_off_loopback():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert exposure_warning(host, None) is None
    public = exposure_warning("0.0.0.0", None)
    assert public.startswith("WARNING") and "all network interfaces" in public
    assert "--api-key" in public
    assert "TLS" in exposure_warning("192.168.1.5", "secret")
