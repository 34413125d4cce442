"""DNS rebinding: the demo answers only requests addressed to this machine (or a named host)."""

from __future__ import annotations

import socket

import httpx
import pytest

from cde_rag.demo_app import DemoIndex, build_demo, launch

pytestmark = pytest.mark.server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running(tiny_model, tmp_path):
    """Start the demo in this process with `extra` allowed hosts; yields its base URL."""
    started = []

    def start(*extra: str) -> str:
        index = DemoIndex(tiny_model, tmp_path / "data")
        port = free_port()
        demo = launch(
            build_demo(index),
            index.data_dir,
            port=port,
            allowed_hosts=extra,
            prevent_thread_lock=True,
        )
        started.append(demo)
        return f"http://127.0.0.1:{port}"

    yield start
    for demo in started:
        demo.close()


def get(url: str, path: str, host: str) -> httpx.Response:
    return httpx.get(url + path, headers={"Host": host}, timeout=30)


def test_loopback_names_only(running):
    url = running()
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert get(url, "/", host).status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.1"):
        for path in ("/", "/config", "/gradio_api/info", "/gradio_api/upload"):
            refused = get(url, path, host)
            assert refused.status_code == 400, (host, path)
            assert "--allowed-host" in refused.json()["error"]["message"]
    upload = httpx.post(
        url + "/gradio_api/upload",
        headers={"Host": "evil.example"},
        files={"files": ("a.txt", b"hello")},
        timeout=30,
    )
    assert upload.status_code == 400


def test_an_allowed_host_is_answered(running):
    url = running("demo.example")
    assert get(url, "/", "demo.example").status_code == 200
    assert get(url, "/", "other.example").status_code == 400
