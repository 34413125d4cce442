"""Who may talk to a local server: the loopback rule and the `Host` header check.

A server bound to 127.0.0.1 is still reachable from any web page the user opens, through DNS
rebinding: the page's own host name is made to resolve to 127.0.0.1, and the browser then sends
that name in the `Host` header. Checking the header against the names that really mean "this
machine" closes that door (as Starlette's `TrustedHostMiddleware` and Jupyter do). The embeddings
server and the demo share this one rule.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

# Host names that always mean this machine (RFC 6761 reserves "localhost" and its subdomains).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a host name, IPv6 with or without brackets) is this
    machine only."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a `Host` header value: no port, no IPv6 brackets, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end != -1 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The `Host` names a server bound to `bind_host` answers, or None for any.

    Bound to loopback: loopback names only, plus `extra` (a reverse proxy's name, say). Bound
    beyond loopback the operator chose exposure, and the check applies only if `extra` names
    hosts.
    """
    names = {host_name(name) for name in extra if name.strip()}
    if not is_loopback(bind_host):
        return frozenset(names) or None
    return frozenset(names | {host_name(bind_host)})


def host_allowed(header: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a request with this `Host` header may be answered."""
    if allowed is None:
        return True
    if not header:
        return False
    name = host_name(header)
    return name in allowed or is_loopback(name)


class HostCheckMiddleware:
    """ASGI middleware: refuse (HTTP 400, JSON body) requests whose `Host` is not allowed."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed is None:
            await self.app(scope, receive, send)
            return
        header = next(
            (value.decode("latin-1") for key, value in scope["headers"] if key == b"host"), None
        )
        if host_allowed(header, self.allowed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = (
            f"Host {header!r} is not allowed: this server answers only requests addressed to "
            "this machine (localhost, 127.0.0.1, [::1]). If you reach it through a proxy or "
            "another name, start it with --allowed-host NAME."
        )
        body = json.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "host_not_allowed",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
