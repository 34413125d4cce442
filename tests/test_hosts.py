"""The loopback rule and the Host-header check that the server and the demo share."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cde_rag.hosts import HostCheckMiddleware, allowed_hosts, host_allowed, host_name, is_loopback


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST.", "a.localhost"]
)
def test_loopback_names(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "", "10.0.0.1", "example.com", "localhost.example.com", "127.0.0.1.nip.io"],
)
def test_not_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:7860", "::1"),
        ("LocalHost", "localhost"),
        ("::1", "::1"),
    ],
)
def test_host_name_drops_port_and_brackets(header, name):
    assert host_name(header) == name


def test_loopback_bind_allows_loopback_names_and_extras_only():
    allowed = allowed_hosts("127.0.0.1", ["proxy.internal"])
    assert host_allowed("localhost:8000", allowed)
    assert host_allowed("[::1]:8000", allowed)
    assert host_allowed("proxy.internal", allowed)
    assert not host_allowed("evil.example:8000", allowed)
    assert not host_allowed(None, allowed)
    assert not host_allowed("", allowed)


def test_exposed_bind_checks_only_named_hosts():
    assert allowed_hosts("0.0.0.0") is None
    assert host_allowed("anything.example", allowed_hosts("0.0.0.0"))
    named = allowed_hosts("0.0.0.0", ["rag.example.org"])
    assert host_allowed("rag.example.org:443", named)
    assert not host_allowed("evil.example", named)


def test_middleware_refuses_rebound_names_with_400():
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    client = TestClient(HostCheckMiddleware(app, allowed_hosts("127.0.0.1")))
    assert client.get("/", headers={"Host": "127.0.0.1:8000"}).text == "ok"
    refused = client.get("/", headers={"Host": "attacker.example:8000"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "host_not_allowed"
    assert "--allowed-host" in refused.json()["error"]["message"]
