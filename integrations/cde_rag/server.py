"""`cde-rag serve`: an OpenAI-compatible embeddings API with corpus contexts as resources.

Many RAG stacks can only talk to an embeddings endpoint. This server speaks OpenAI's
`/v1/embeddings` protocol, so those stacks (the `openai` client, LangChain's `OpenAIEmbeddings`,
...) can use cde-small-v2 unchanged, and adds what a contextual model needs: contexts that are
fitted, stored and chosen per request (`context`), and the query/document switch (`input_type`).

It is built for careless and hostile clients too: every request is bounded (inputs, tokens,
body bytes) and checked before it reaches the model, one request's failure never fails
another's, and a web page cannot reach it through DNS rebinding (`cde_rag.hosts`). The request
and response bodies, and the OpenAPI document, live in `server_schema`; the stored contexts in
`context_store`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .batching import MicroBatcher
from .context import CorpusContext, LegacyContextWarning
from .context_store import (
    CONTEXT_ID_PATTERN,
    DEFAULT_CONTEXT_ID,
    ContextStorageError,
    ContextStore,
    check_context_id,
    context_object,
    is_default_id,
    write_context_file,
)
from .drift import REFIT_THRESHOLD, measure_drift
from .errors import ContextError
from .hosts import HostCheckMiddleware, allowed_hosts, is_loopback
from .model import CDEModel
from .paths import data_dir as user_data_dir
from .server_errors import APIError, add_error_handlers, error_response
from .server_limits import MAX_BODY_BYTES, MAX_INPUTS, MAX_TOKENS, RequestLimits
from .server_middleware import APIKeyMiddleware, BodyLimitMiddleware
from .server_schema import (
    ContextDeleted,
    ContextInfo,
    ContextList,
    ContextRequest,
    DriftReport,
    DriftRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    Health,
    ModelInfo,
    ModelList,
    Stats,
    TextsError,
    UnusableContext,
    check_texts_field,
    error_responses,
    finish_openapi,
)

__all__ = [
    "API_KEY_ENV",
    "CONTEXT_ID_PATTERN",
    "DEFAULT_CONTEXT_ID",
    "MAX_BODY_BYTES",
    "MAX_INPUTS",
    "MAX_TOKENS",
    "SERVED_NAME",
    "APIError",
    "APIKeyMiddleware",
    "BodyLimitMiddleware",
    "ContextRequest",
    "ContextStore",
    "EmbeddingRequest",
    "RequestLimits",
    "cached_fallback",
    "check_context_id",
    "context_from_rows",
    "context_object",
    "create_app",
    "default_data_dir",
    "error_response",
    "exposure_warning",
    "input_texts",
    "render_embeddings",
    "serve",
]

log = logging.getLogger(__name__)

SERVED_NAME = "cde-small-v2"
API_KEY_ENV = "CDE_RAG_API_KEY"
# Examples in the OpenAPI document, so that generated tests reach existing resources too.
SERVED = {"served": {"value": SERVED_NAME}}
ContextId = Annotated[str, PathParam(openapi_examples={"default": {"value": DEFAULT_CONTEXT_ID}})]


def default_data_dir() -> Path:
    """Where contexts live unless `--data` says otherwise (XDG data home)."""
    return user_data_dir("server")


def model_label(name: str) -> str:
    """A model's name without where it was loaded from: a local folder's own name, else the
    hub id. Clients need the name; the server's file layout is none of their business."""
    path = Path(name).expanduser()
    return path.name if path.is_absolute() or path.exists() else name


# -- the app -----------------------------------------------------------------------------------


def cached_fallback(model: CDEModel, folder: Path) -> CorpusContext:
    """The model's random-strings fallback, computed once per model and kept on disk."""
    path = folder / f"{model.fingerprint}.safetensors"
    try:
        return model.check_context(CorpusContext.load(path))
    except ContextError:
        pass  # not computed yet, or unreadable: it is a cache, recompute it
    # cde-rag before context format 2 named the file by the model's older fingerprint. Reuse
    # it (saved again under today's name), so the default context keeps its numbers and
    # checksum, and vectors clients stored with it still match.
    legacy = folder / f"{model.checkpoint.legacy_fingerprint}.safetensors"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LegacyContextWarning)  # it is saved again below
            ctx = model.check_context(CorpusContext.load(legacy))
    except ContextError:
        ctx = model.fallback_context()
    try:
        write_context_file(ctx, path, overwrite=True)
    except ContextStorageError as exc:
        log.warning("The fallback context is not cached, it will be computed again: %s", exc)
    return ctx


def create_app(
    model: CDEModel,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    default_context: CorpusContext | None = None,
    api_key: str | None = None,
    max_wait: float = 0.005,
    max_batch_texts: int = 256,
    host: str = "127.0.0.1",
    extra_hosts: Iterable[str] = (),
    limits: RequestLimits | None = None,
) -> FastAPI:
    """The ASGI app. Loads stored contexts and the default context before returning.

    `default_context` is used when a request names none; without it, the model's
    random-strings fallback (computed once, cached in `data_dir/fallback/`). `host` is the
    address the app is served on: bound to loopback, it answers only requests addressed to
    this machine or to one of `extra_hosts` (`cde_rag.hosts`).
    """
    limits = limits or RequestLimits()
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    store = ContextStore(model, folder / "contexts")
    if default_context is None:
        default_context = cached_fallback(model, folder / "fallback")
    default_context = model.check_context(default_context)
    batcher = MicroBatcher(model, max_wait=max_wait, max_texts=max_batch_texts)
    label = model_label(model.name)
    listed = sorted({SERVED_NAME, label, Path(label).name})
    accepted = {*listed, model.name}
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(
        title="cde-rag embeddings server",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.store = store
    app.state.batcher = batcher
    app.state.default_context = default_context
    app.state.limits = limits
    add_error_handlers(app)
    # Outermost last: the Host check, then the key, then the body limit.
    app.add_middleware(BodyLimitMiddleware, limit=limits.max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(HostCheckMiddleware, allowed=allowed_hosts(host, extra_hosts))

    def describe(context_id: str, ctx: CorpusContext, sample: int = 5) -> dict[str, Any]:
        return context_object(context_id, ctx, sample, model_label=label)

    def resolve_context(
        context_id: str | None, param: str = "context"
    ) -> tuple[str, CorpusContext]:
        if is_default_id(context_id):
            return DEFAULT_CONTEXT_ID, default_context
        ctx = store.get(context_id, param)
        return check_context_id(context_id, param), ctx

    async def count_tokens(texts: list[str], input_type: str, param: str) -> list[int]:
        """Tokens per text, or a 400 when the request's total is over --max-tokens."""
        tokens = await run_in_threadpool(model.count_tokens, texts, input_type)
        if sum(tokens) > limits.max_tokens:
            raise APIError(
                400,
                f"This request has {sum(tokens)} tokens (each text cut to the model's "
                f"{model.max_length}); at most {limits.max_tokens} are allowed per request "
                f"(cde-rag serve --max-tokens). Split '{param}' into several requests.",
                param=param,
                code="max_tokens_per_request",
            )
        return tokens

    def model_object(name: str = SERVED_NAME) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "cde-rag",
            "root": label,
            "aliases": listed,
            "fingerprint": model.fingerprint,
            "revision": model.revision,
            "backbone_revision": model.backbone_revision,
            "dimensions": model.dim,
            "corpus_size": model.corpus_size,
            "max_input_tokens": model.max_length,
        }

    def check_model(name: str) -> None:
        if name not in accepted:
            raise APIError(
                404,
                f"The model {name!r} does not exist. This server serves {SERVED_NAME!r} "
                f"(also accepted: {', '.join(repr(n) for n in listed if n != SERVED_NAME)}).",
                param="model",
                code="model_not_found",
            )

    @app.get("/health", response_model=Health, responses=error_responses())
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": label}

    @app.get("/v1/models", response_model=ModelList, responses=error_responses())
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{name:path}", response_model=ModelInfo, responses=error_responses(404))
    async def get_model(name: Annotated[str, PathParam(openapi_examples=SERVED)]) -> dict[str, Any]:
        check_model(name)
        return model_object(name)

    @app.get("/v1/stats", response_model=Stats, responses=error_responses())
    async def stats() -> dict[str, Any]:
        """Batching counters: model calls vs. requests shows how much merging happens."""
        return {"object": "stats", **vars(batcher.stats)}

    @app.post(
        "/v1/embeddings",
        responses={
            200: {"model": EmbeddingResponse, "description": "The vectors, in input order."},
            **error_responses(404, 413),
        },
    )
    async def create_embeddings(body: EmbeddingRequest) -> Response:
        check_model(body.model)
        if body.dimensions is not None and body.dimensions != model.dim:
            raise APIError(
                400,
                f"This model returns {model.dim}-dimensional vectors; 'dimensions' must be "
                f"{model.dim} or omitted.",
                param="dimensions",
            )
        texts = check_texts_field(body.input, "input", limits.max_inputs)
        context_id, ctx = resolve_context(body.context)
        tokens = await count_tokens(texts, body.input_type, "input")
        vectors, tokens = await batcher.embed(
            texts, context=ctx, input_type=body.input_type, tokens=tokens
        )
        content = await run_in_threadpool(
            render_embeddings,
            vectors,
            tokens,
            model=body.model,
            encoding_format=body.encoding_format,
            context={
                "id": context_id,
                "fingerprint": ctx.fingerprint,
                "checksum": ctx.checksum,
                "kind": ctx.kind,
            },
            input_type=body.input_type,
        )
        return Response(content, media_type="application/json")

    @app.post(
        "/v1/contexts",
        status_code=201,
        response_model=ContextInfo,
        responses={
            200: {"model": ContextInfo, "description": "This context was stored already."},
            **error_responses(409, 413, 507),
        },
    )
    async def create_context(body: ContextRequest, response: Response) -> dict[str, Any]:
        if (body.documents is None) == (body.embeddings is None):
            raise APIError(
                400,
                "Send either 'documents' (texts to fit the context on) or 'embeddings' "
                f"({model.corpus_size} first-stage vectors of {model.dim} numbers), not both "
                "or neither.",
            )
        if body.id is not None:
            store.check_new_id(body.id)
        if body.documents is not None:
            documents = check_texts_field(body.documents, "documents")
            ctx = await run_in_threadpool(model.fit_context, documents, seed=body.seed)
        else:
            ctx = context_from_rows(model, body.embeddings or [])
        context_id, stored, created_now = await run_in_threadpool(store.add, ctx, body.id)
        response.status_code = 201 if created_now else 200
        return describe(context_id, stored)

    @app.get("/v1/contexts", response_model=ContextList, responses=error_responses())
    async def list_contexts() -> dict[str, Any]:
        default = describe(DEFAULT_CONTEXT_ID, default_context, sample=0)
        return {"object": "list", "data": [default, *store.list(model_label=label)]}

    @app.get(
        "/v1/contexts/{context_id}",
        response_model=ContextInfo | UnusableContext,
        responses=error_responses(404),
    )
    async def get_context(context_id: ContextId) -> dict[str, Any]:
        if is_default_id(context_id):
            return describe(DEFAULT_CONTEXT_ID, default_context)
        return store.describe(context_id, model_label=label)

    @app.delete(
        "/v1/contexts/{context_id}", response_model=ContextDeleted, responses=error_responses(404)
    )
    async def delete_context(context_id: ContextId) -> dict[str, Any]:
        if is_default_id(context_id):
            raise APIError(
                400,
                "The server's default context cannot be deleted; restart the server with "
                "another --context to change it.",
                param="context_id",
            )
        deleted = await run_in_threadpool(store.delete, context_id)
        return {"object": "context.deleted", "id": deleted, "deleted": True}

    @app.post(
        "/v1/contexts/{context_id}/drift",
        response_model=DriftReport,
        responses=error_responses(404, 413),
    )
    async def context_drift(context_id: ContextId, body: DriftRequest) -> dict[str, Any]:
        """How far `documents` have drifted from the context (`cde_rag.drift`): the first stage
        on each document, bounded like an embeddings request. Nothing is stored."""
        context_id, ctx = resolve_context(context_id, "context_id")
        texts = check_texts_field(body.documents, "documents", limits.max_inputs)
        population = len(texts) if body.population is None else body.population
        if population < len(texts):
            raise APIError(
                400,
                f"'population' ({population}) is the number of documents the sample was drawn "
                f"from, so it cannot be less than the {len(texts)} sent; omit it when they are "
                "all of them.",
                param="population",
            )
        await count_tokens(texts, "document", "documents")
        drift = await run_in_threadpool(
            measure_drift, model, ctx, texts, population=population, show_progress=False
        )
        recommended = drift > REFIT_THRESHOLD
        if recommended:
            advice = (
                f"Drift {drift:.3f} is above {REFIT_THRESHOLD}: these documents have moved away "
                "from what the context was fitted on. Fit a new context on them (POST "
                "/v1/contexts) and re-embed the vectors you stored with this one."
            )
        else:
            advice = f"Drift {drift:.3f} is within {REFIT_THRESHOLD}: the context still fits."
        return {
            "object": "context.drift",
            "id": context_id,
            "fingerprint": ctx.fingerprint,
            "drift": drift,
            "sampled": len(texts),
            "population": population,
            "threshold": REFIT_THRESHOLD,
            "refit_recommended": recommended,
            "advice": advice,
        }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = finish_openapi(
                document,
                max_inputs=limits.max_inputs,
                corpus_size=model.corpus_size,
                dim=model.dim,
                api_key=bool(api_key),
                open_paths={"/health"},
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def context_from_rows(model: CDEModel, rows: list[list[float]]) -> CorpusContext:
    widths = {len(row) for row in rows}
    if len(rows) != model.corpus_size or widths != {model.dim}:
        raise APIError(
            400,
            f"'embeddings' must be {model.corpus_size} rows of {model.dim} numbers for this "
            f"model; got {len(rows)} rows of widths {sorted(widths)}.",
            param="embeddings",
            code="invalid_context_embeddings",
        )
    with np.errstate(over="ignore"):  # numbers beyond float32 become inf, refused below
        matrix = np.asarray(rows, dtype=np.float32)
    try:
        return model.context_from_embeddings(matrix)
    except ContextError as exc:
        raise APIError(
            400, str(exc), param="embeddings", code="invalid_context_embeddings"
        ) from None


def render_embeddings(
    vectors: np.ndarray,
    tokens: list[int],
    *,
    model: str,
    encoding_format: str,
    context: dict[str, Any],
    input_type: str,
) -> bytes:
    """OpenAI's response body; base64 is little-endian float32, as OpenAI sends it."""
    if encoding_format == "base64":
        data = [
            base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
            for row in vectors
        ]
    else:
        data = vectors.tolist()
    total = int(sum(tokens))
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding}
            for i, embedding in enumerate(data)
        ],
        "model": model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
        "context": context,
        "input_type": input_type,
    }
    # allow_nan=False: a NaN that slipped past the batcher's check fails loudly, never as JSON.
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


# -- running -----------------------------------------------------------------------------------


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when `host` is reachable from other machines, else None."""
    if is_loopback(host):
        return None
    where = "all network interfaces" if host in ("0.0.0.0", "::", "") else host
    advice = (
        "Requests need the API key, which travels in clear text: put a TLS proxy in front."
        if api_key
        else f"Anyone who can reach it can use it: set --api-key (or {API_KEY_ENV})."
    )
    return f"WARNING: cde-rag serve is listening on {where}, not only on this machine. {advice}"


def serve(
    model: CDEModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    default_context: CorpusContext | None = None,
    max_wait: float = 0.005,
    max_batch_texts: int = 256,
    extra_hosts: Iterable[str] = (),
    limits: RequestLimits | None = None,
    log_level: str = "info",
) -> None:
    """Run the server until interrupted (what `cde-rag serve` calls)."""
    import uvicorn

    app = create_app(
        model,
        data_dir=data_dir,
        default_context=default_context,
        api_key=api_key,
        max_wait=max_wait,
        max_batch_texts=max_batch_texts,
        host=host,
        extra_hosts=extra_hosts,
        limits=limits,
    )
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    ctx = app.state.default_context
    print(
        f"cde-rag: serving {model.name} as {SERVED_NAME!r} at http://{host}:{port}/v1 "
        f"(default context {ctx.fingerprint[:12]}, {ctx.kind}; "
        f"{len(app.state.store)} stored contexts; "
        f"API key {'required' if api_key else 'not required'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def input_texts(value: Any, param: str = "input", max_items: int | None = MAX_INPUTS) -> list[str]:
    """Deprecated: use `server_schema.check_texts_field` (this one raises `APIError`, 400)."""
    warnings.warn(
        "cde_rag.server.input_texts is deprecated; use cde_rag.server_schema.check_texts_field.",
        DeprecationWarning,
        stacklevel=2,
    )
    try:
        return check_texts_field(value, param, max_items)
    except TextsError as exc:
        raise APIError(400, str(exc), param=exc.param, code=exc.code) from None
