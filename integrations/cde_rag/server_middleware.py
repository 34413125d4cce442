"""ASGI middleware of `cde-rag serve` that answers before the app runs: the API key and the
request body limit. (The Host-header check is `cde_rag.hosts.HostCheckMiddleware`.)"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .server_errors import APIError, error_response

MIB = 1024 * 1024


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
    """Refuse request bodies over `limit` bytes before they fill memory: from the declared
    Content-Length before reading a byte, else by counting while the body streams in."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    def _error(self) -> APIError:
        return APIError(
            413,
            f"The request body exceeds {self.limit / MIB:g} MiB (cde-rag serve --max-body-mb). "
            "Send fewer or shorter texts per request: the model reads only the first 512 "
            "tokens of each.",
            code="request_too_large",
            # The rest of the body is never read: end the connection rather than drain it.
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._error().response()(scope, receive, send)
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
