"""`cde-rag serve`: an OpenAI-compatible embeddings API with corpus contexts as resources.

Many RAG stacks can only talk to an embeddings endpoint. This server speaks OpenAI's
`/v1/embeddings` protocol, so those stacks (the `openai` client, LangChain's `OpenAIEmbeddings`,
...) can use cde-small-v2 unchanged, and adds what a contextual model needs: contexts that are
fitted, stored and chosen per request (`context`), and the query/document switch (`input_type`).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import MicroBatcher
from .context import DEFAULT_SEED, CorpusContext
from .errors import CDEError, ContextError
from .model import CDEModel

log = logging.getLogger(__name__)

SERVED_NAME = "cde-small-v2"
DEFAULT_CONTEXT_ID = "default"
# OpenAI's own limit on inputs per request; clients already chunk to it.
MAX_INPUTS = 2048
MAX_BODY_BYTES = 64 * 1024 * 1024
CONTEXT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
API_KEY_ENV = "CDE_RAG_API_KEY"


def default_data_dir() -> Path:
    """Where contexts live unless `--data` says otherwise (XDG data home)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cde-rag" / "server"


# -- errors ------------------------------------------------------------------------------------


class APIError(HTTPException):
    """An error answered in OpenAI's shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(status_code, message)
        self.message = message
        self.param = param
        self.code = code
        self.type = type


def error_response(
    status_code: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # Client errors are final: tell OpenAI's client not to retry them (it retries 409 otherwise).
    extra = {"x-should-retry": "false"} if status_code < 500 else {}
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": code}},
        status_code=status_code,
        headers={**extra, **(headers or {})},
    )


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """One readable sentence for the first thing pydantic or the JSON parser rejected."""
    kind = error.get("type", "")
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return (
            f"The request body is not valid JSON ({detail}). Send a JSON object with "
            "Content-Type: application/json.",
            None,
        )
    if kind == "extra_forbidden":
        return (
            f"Unrecognized request argument supplied: {param}. Check the spelling: a "
            "misspelled option would otherwise be ignored silently.",
            param,
        )
    if not loc:
        return "The request body must be a JSON object.", None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    return f"Invalid value for '{param}': {error.get('msg', 'invalid')}.", param


# -- request bodies ----------------------------------------------------------------------------


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus `input_type` and `context`."""

    model_config = ConfigDict(extra="forbid")

    input: Any
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    input_type: Literal["document", "query"] = "document"
    context: str | None = None


class ContextRequest(BaseModel):
    """Fit a context from `documents`, or wrap first-stage `embeddings` (N x dim)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    documents: Any = None
    seed: int = Field(DEFAULT_SEED, ge=0)
    embeddings: list[list[float]] | None = None


def input_texts(value: Any, param: str = "input", max_items: int | None = MAX_INPUTS) -> list[str]:
    """A JSON string or list of non-empty strings, or an APIError naming the first bad item.

    Empty strings are refused as OpenAI refuses them: they carry nothing to embed, and a
    vector for them would only be the prefix's.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise APIError(
            400,
            f"'{param}' must be a string or a list of strings, not {_json_type(value)}.",
            param=param,
        )
    if not value:
        raise APIError(400, f"'{param}' is empty: send at least one string.", param=param)
    if max_items is not None and len(value) > max_items:
        raise APIError(
            400,
            f"'{param}' has {len(value)} items; at most {max_items} are allowed per request. "
            "Split the list into several requests.",
            param=param,
        )
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value) or any(
        isinstance(item, list) for item in value
    ):
        raise APIError(
            400,
            "Token arrays are not supported: cde-small-v2 has its own tokenizer. Send the texts "
            "as strings (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)).",
            param=param,
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise APIError(400, f"{param}[{i}] is {_json_type(item)}, not a string.", param=param)
        if not item:
            raise APIError(
                400,
                f"{param}[{i}] is an empty string; drop empty texts before sending them.",
                param=param,
            )
    return value


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


# -- contexts ----------------------------------------------------------------------------------


def check_context_id(context_id: str, param: str = "context") -> str:
    """Ids become file names: only letters, digits, '-' and '_' (no paths, no dots)."""
    if not CONTEXT_ID_PATTERN.fullmatch(context_id):
        raise APIError(
            400,
            f"Invalid context id {context_id!r}: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit.",
            param=param,
            code="invalid_context_id",
        )
    return context_id


class ContextStore:
    """The named contexts of one model, each saved as `<folder>/<id>.safetensors`.

    Files that cannot be used (corrupted, or made by another model) are reported and left
    untouched on disk, and their ids stay taken until deleted explicitly.
    """

    def __init__(self, model: CDEModel, folder: Path):
        self.model = model
        self.folder = folder
        # `_lock` guards the dicts for a moment; `_write_lock` orders the slow disk writes,
        # so requests that only read a context never wait for an fsync.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._contexts: dict[str, CorpusContext] = {}
        self._unusable: dict[str, str] = {}
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.safetensors")):
            context_id = path.stem
            if not CONTEXT_ID_PATTERN.fullmatch(context_id) or context_id == DEFAULT_CONTEXT_ID:
                log.warning("Ignoring %s: its name is not a valid context id.", path)
                continue
            try:
                self._contexts[context_id] = model.check_context(CorpusContext.load(path))
            except (ContextError, OSError) as exc:
                self._unusable[context_id] = str(exc)
                log.warning("Context %r is stored but unusable: %s", context_id, exc)

    def __len__(self) -> int:
        with self._lock:
            return len(self._contexts) + len(self._unusable)

    def _path(self, context_id: str) -> Path:
        return self.folder / f"{context_id}.safetensors"

    def get(self, context_id: str) -> CorpusContext:
        check_context_id(context_id)
        with self._lock:
            ctx = self._contexts.get(context_id)
            reason = self._unusable.get(context_id)
        if ctx is not None:
            return ctx
        if reason is not None:
            raise APIError(
                400,
                f"Context {context_id!r} is stored but unusable: {reason}",
                param="context",
                code="context_unusable",
            )
        raise _not_found(context_id)

    def describe(self, context_id: str) -> dict[str, Any]:
        check_context_id(context_id)
        with self._lock:
            reason = self._unusable.get(context_id)
        if reason is not None:
            return {"object": "context", "id": context_id, "usable": False, "error": reason}
        return context_object(context_id, self.get(context_id))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            usable = sorted(self._contexts.items())
            unusable = sorted(self._unusable.items())
        return [context_object(cid, ctx, sample=0) for cid, ctx in usable] + [
            {"object": "context", "id": cid, "usable": False, "error": reason}
            for cid, reason in unusable
        ]

    @staticmethod
    def check_new_id(context_id: str) -> str:
        """Refuse an id that can never be created, before any slow fitting starts."""
        check_context_id(context_id, "id")
        if context_id == DEFAULT_CONTEXT_ID:
            raise APIError(400, "The id 'default' names the server's default context.", param="id")
        return context_id

    def add(self, ctx: CorpusContext, context_id: str | None) -> tuple[str, CorpusContext, bool]:
        """Store `ctx`; returns (id, stored context, created). Adding the same context under
        the same id again returns the stored one."""
        context_id = self.check_new_id(context_id or f"ctx-{ctx.fingerprint[:16]}")
        with self._write_lock:
            with self._lock:
                existing = self._contexts.get(context_id)
                taken = existing is not None or context_id in self._unusable
            if existing is not None and existing.fingerprint == ctx.fingerprint:
                return context_id, existing, False
            if taken:
                raise APIError(
                    409,
                    f"Context id {context_id!r} is taken by another context. Choose another "
                    f"id, or DELETE /v1/contexts/{context_id} first.",
                    param="id",
                    code="context_exists",
                )
            ctx.save(self._path(context_id))
            with self._lock:
                self._contexts[context_id] = ctx
        return context_id, ctx, True

    def delete(self, context_id: str) -> None:
        check_context_id(context_id)
        with self._write_lock:
            with self._lock:
                known = context_id in self._contexts or context_id in self._unusable
            if not known:
                raise _not_found(context_id)
            self._path(context_id).unlink(missing_ok=True)
            with self._lock:
                self._contexts.pop(context_id, None)
                self._unusable.pop(context_id, None)


def _not_found(context_id: str) -> APIError:
    return APIError(
        404,
        f"No context with id {context_id!r}. List them with GET /v1/contexts, or create one "
        "with POST /v1/contexts.",
        param="context",
        code="context_not_found",
    )


def context_object(context_id: str, ctx: CorpusContext, sample: int = 5) -> dict[str, Any]:
    return {"object": "context", "id": context_id, "usable": True, **ctx.describe(sample)}


def cached_fallback(model: CDEModel, folder: Path) -> CorpusContext:
    """The model's random-strings fallback, computed once per model and kept on disk."""
    path = folder / f"{model.fingerprint}.safetensors"
    try:
        return model.check_context(CorpusContext.load(path))
    except ContextError:
        pass  # not computed yet, or unreadable: it is a cache, recompute it
    ctx = model.fallback_context()
    ctx.save(path)
    return ctx


# -- middleware --------------------------------------------------------------------------------


class APIKeyMiddleware:
    """Require `Authorization: Bearer <key>` on every route but /health."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if not header:
            message = "Missing API key: send the header 'Authorization: Bearer <key>'."
        elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            message = "Incorrect API key provided."
        else:
            await self.app(scope, receive, send)
            return
        response = error_response(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes before they fill memory."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    def _error(self) -> APIError:
        return APIError(
            413,
            f"The request body exceeds {self.limit // (1024 * 1024)} MiB. Send fewer or shorter "
            "texts per request (the model reads only the first 512 tokens of each).",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            error = self._error()
            response = error_response(error.status_code, error.message, code=error.code)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._error()
            return message

        await self.app(scope, limited, send)


# -- the app -----------------------------------------------------------------------------------


def create_app(
    model: CDEModel,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    default_context: CorpusContext | None = None,
    api_key: str | None = None,
    max_wait: float = 0.005,
    max_batch_texts: int = 256,
) -> FastAPI:
    """The ASGI app. Loads stored contexts and the default context before returning.

    `default_context` is used when a request names none; without it, the model's
    random-strings fallback (computed once, cached in `data_dir/fallback/`).
    """
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    store = ContextStore(model, folder / "contexts")
    if default_context is None:
        default_context = cached_fallback(model, folder / "fallback")
    default_context = model.check_context(default_context)
    batcher = MicroBatcher(model, max_wait=max_wait, max_texts=max_batch_texts)
    names = {SERVED_NAME, model.name, Path(model.name).name}
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
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    def resolve_context(context_id: str | None) -> tuple[str, CorpusContext]:
        if context_id is None or context_id == DEFAULT_CONTEXT_ID:
            return DEFAULT_CONTEXT_ID, default_context
        return context_id, store.get(context_id)

    def model_object(name: str = SERVED_NAME) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "cde-rag",
            "root": model.name,
            "aliases": sorted(names),
            "fingerprint": model.fingerprint,
            "dimensions": model.dim,
            "corpus_size": model.corpus_size,
            "max_input_tokens": model.max_length,
        }

    def check_model(name: str) -> None:
        if name not in names:
            raise APIError(
                404,
                f"The model `{name}` does not exist. This server serves {SERVED_NAME!r} "
                f"(also accepted: {', '.join(repr(n) for n in sorted(names - {SERVED_NAME}))}).",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.name}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_object(name)

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        """Batching counters: model calls vs. requests shows how much merging happens."""
        return {"object": "stats", **vars(batcher.stats)}

    @app.post("/v1/embeddings")
    async def create_embeddings(body: EmbeddingRequest) -> Response:
        check_model(body.model)
        if body.dimensions is not None and body.dimensions != model.dim:
            raise APIError(
                400,
                f"This model returns {model.dim}-dimensional vectors; 'dimensions' must be "
                f"{model.dim} or omitted.",
                param="dimensions",
            )
        texts = input_texts(body.input)
        context_id, ctx = resolve_context(body.context)
        vectors, tokens = await batcher.embed(texts, context=ctx, input_type=body.input_type)
        content = await run_in_threadpool(
            render_embeddings,
            vectors,
            tokens,
            model=body.model,
            encoding_format=body.encoding_format,
            context={"id": context_id, "fingerprint": ctx.fingerprint, "kind": ctx.kind},
            input_type=body.input_type,
        )
        return Response(content, media_type="application/json")

    @app.post("/v1/contexts", status_code=201)
    async def create_context(body: ContextRequest) -> JSONResponse:
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
            documents = input_texts(body.documents, "documents", max_items=None)
            ctx = await run_in_threadpool(model.fit_context, documents, seed=body.seed)
        else:
            ctx = context_from_rows(model, body.embeddings or [])
        context_id, stored, created_now = await run_in_threadpool(store.add, ctx, body.id)
        return JSONResponse(
            context_object(context_id, stored), status_code=201 if created_now else 200
        )

    @app.get("/v1/contexts")
    async def list_contexts() -> dict[str, Any]:
        default = context_object(DEFAULT_CONTEXT_ID, default_context, sample=0)
        return {"object": "list", "data": [default, *store.list()]}

    @app.get("/v1/contexts/{context_id}")
    async def get_context(context_id: str) -> dict[str, Any]:
        if context_id == DEFAULT_CONTEXT_ID:
            return context_object(DEFAULT_CONTEXT_ID, default_context)
        return store.describe(context_id)

    @app.delete("/v1/contexts/{context_id}")
    async def delete_context(context_id: str) -> dict[str, Any]:
        if context_id == DEFAULT_CONTEXT_ID:
            raise APIError(
                400,
                "The server's default context cannot be deleted; restart the server with "
                "another --context to change it.",
                param="context_id",
            )
        await run_in_threadpool(store.delete, context_id)
        return {"object": "context.deleted", "id": context_id, "deleted": True}

    return app


def context_from_rows(model: CDEModel, rows: list[list[float]]) -> CorpusContext:
    widths = {len(row) for row in rows}
    if len(rows) != model.corpus_size or widths != {model.dim}:
        raise APIError(
            400,
            f"'embeddings' must be {model.corpus_size} rows of {model.dim} numbers for this "
            f"model; got {len(rows)} rows of widths {sorted(widths)}.",
            param="embeddings",
        )
    try:
        return model.context_from_embeddings(np.asarray(rows, dtype=np.float32))
    except ContextError as exc:
        raise APIError(400, str(exc), param="embeddings") from None


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
    return json.dumps(payload, separators=(",", ":")).encode()


def _add_error_handlers(app: FastAPI) -> None:
    Handler = Callable[[Request, Any], Awaitable[Response]]

    async def api_error(_: Request, exc: APIError) -> Response:
        return error_response(
            exc.status_code, exc.message, param=exc.param, code=exc.code, type=exc.type
        )

    async def http_error(_: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc.errors()[0])
        return error_response(400, message, param=param)

    async def engine_error(_: Request, exc: CDEError) -> Response:
        return error_response(400, str(exc))

    async def server_error(_: Request, exc: Exception) -> Response:
        log.exception("Unhandled error", exc_info=exc)
        return error_response(
            500,
            f"The server failed on this request ({type(exc).__name__}); it keeps serving "
            "others. See the server log.",
            type="server_error",
        )

    handlers: dict[type[Exception], Handler] = {
        APIError: api_error,
        HTTPException: http_error,
        RequestValidationError: validation_error,
        CDEError: engine_error,
        Exception: server_error,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)


# -- running -----------------------------------------------------------------------------------


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when `host` is reachable from other machines, else None."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
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
