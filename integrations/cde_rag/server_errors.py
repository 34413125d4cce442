"""Errors of `cde-rag serve` in OpenAI's shape, and the one table that maps cde-rag's domain
errors to HTTP statuses (as chromadb's `errors.py` gives each error its status and one FastAPI
handler maps them): the stores and the engine raise what went wrong, only this module knows
HTTP.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from .context_store import (
    ContextExistsError,
    ContextNotFoundError,
    ContextStorageError,
    ContextUnusableError,
    InvalidContextIdError,
    StorageFullError,
)
from .errors import CDEError, NumericalError
from .server_schema import TextsError

log = logging.getLogger(__name__)


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
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status_code, message, headers=headers)
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def response(self) -> Response:
        # Client errors are final: tell OpenAI's client not to retry them (it retries 409
        # otherwise).
        extra = {"x-should-retry": "false"} if self.status_code < 500 else {}
        fields = {"message": self.message, "type": self.type, "param": self.param}
        # ASCII-only JSON: whatever a message quotes, the body is valid UTF-8.
        return Response(
            json.dumps({"error": {**fields, "code": self.code}}).encode(),
            status_code=self.status_code,
            media_type="application/json",
            headers={**extra, **(self.headers or {})},
        )


# Domain errors -> (HTTP status, OpenAI-style code). The first class in an error's MRO wins.
ERROR_STATUS: dict[type[Exception], tuple[int, str | None]] = {
    InvalidContextIdError: (400, "invalid_context_id"),
    ContextUnusableError: (400, "context_unusable"),
    ContextNotFoundError: (404, "context_not_found"),
    ContextExistsError: (409, "context_exists"),
    StorageFullError: (507, "insufficient_storage"),
    ContextStorageError: (500, "storage_error"),
    NumericalError: (500, "non_finite_output"),  # the model's fault, not the request's
    TextsError: (400, None),
    CDEError: (400, None),
}


def error_response(status_code: int, message: str, **fields: Any) -> Response:
    """An error response in OpenAI's shape (`fields`: those of `APIError`)."""
    return APIError(status_code, message, **fields).response()


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(message, param, code) for the first thing pydantic or the JSON parser rejected."""
    kind = error.get("type", "")
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if kind == "invalid_text":
        ctx = error.get("ctx") or {}
        return ctx.get("message", error.get("msg", "")), ctx.get("param"), "invalid_text"
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return (
            f"The request body is not valid JSON ({detail}). Send a JSON object with "
            "Content-Type: application/json.",
            None,
            None,
        )
    if kind == "extra_forbidden":
        return (
            f"Unrecognized request argument supplied: {param!r}. Check the spelling: a "
            "misspelled option would otherwise be ignored silently.",
            param,
            None,
        )
    if not loc:
        return "The request body must be a JSON object.", None, None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param, None
    return f"Invalid value for '{param}': {error.get('msg', 'invalid')}.", param, None


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape; domain errors by `ERROR_STATUS`."""

    async def api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    async def http_error(_: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        message, param, code = _validation_message(exc.errors()[0])
        return error_response(400, message, param=param, code=code)

    async def domain_error(_: Request, exc: Exception) -> Response:
        status, code = next(ERROR_STATUS[c] for c in type(exc).__mro__ if c in ERROR_STATUS)
        if status >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        code = getattr(exc, "code", None) or code
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return error_response(
            status, str(exc), param=getattr(exc, "param", None), code=code, type=kind
        )

    async def server_error(_: Request, exc: Exception) -> Response:
        log.exception("Unhandled error", exc_info=exc)
        return error_response(
            500,
            f"The server failed on this request ({type(exc).__name__}); it keeps serving "
            "others. See the server log.",
            type="server_error",
        )

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for exc_type in ERROR_STATUS:
        app.add_exception_handler(exc_type, domain_error)
    app.add_exception_handler(Exception, server_error)
