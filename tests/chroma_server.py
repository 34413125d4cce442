"""A real Chroma server for tests: `chroma run` on 127.0.0.1, started and stopped by PID.

Use the context manager directly, or make a pytest fixture with `chroma_server_fixture()`:

    from chroma_server import chroma_server_fixture, running_chroma_server  # tests/ is on sys.path
    chroma = chroma_server_fixture(scope="module")      # in a test module

    def test_x(chroma):
        client = chroma.client()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


def chroma_executable() -> Path:
    """The `chroma` CLI that ships with chromadb, next to this interpreter."""
    path = Path(sys.executable).parent / "chroma"
    if not path.exists():
        raise FileNotFoundError(f"No chroma executable at {path}; install chromadb in this venv.")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env() -> dict[str, str]:
    return {**os.environ, "ANONYMIZED_TELEMETRY": "False"}


@dataclass
class ChromaServer:
    path: Path
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self) -> Any:
        import chromadb

        return chromadb.HttpClient(
            host=self.host,
            port=self.port,
            settings=chromadb.Settings(anonymized_telemetry=False),
        )

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None


def _heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_heartbeat(server: ChromaServer, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"chroma run exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        if _heartbeat(server.url):
            return
        time.sleep(0.2)
    raise TimeoutError(f"chroma server at {server.url} gave no heartbeat in {timeout:.0f}s")


def stop(server: ChromaServer, timeout: float = 15.0) -> None:
    """SIGTERM the server's PID, then SIGKILL it if it lingers."""
    if not server.alive():
        return
    os.kill(server.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(timeout=timeout)


def start(path: str | os.PathLike[str], port: int | None = None) -> ChromaServer:
    """Start `chroma run --path PATH --host 127.0.0.1 --port P` and wait for its heartbeat."""
    data = Path(path)
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}-chroma-server.log"
    port = port or free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                str(chroma_executable()),
                "run",
                "--path",
                str(data),
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,
        )
    server = ChromaServer(path=data, host=HOST, port=port, process=process, log=log)
    try:
        wait_for_heartbeat(server)
    except BaseException:
        stop(server)
        raise
    return server


@contextmanager
def running_chroma_server(
    path: str | os.PathLike[str], port: int | None = None
) -> Iterator[ChromaServer]:
    server = start(path, port)
    try:
        yield server
    finally:
        stop(server)


def chroma_server_fixture(scope: str = "module") -> Any:
    """A pytest fixture yielding a `ChromaServer` on a fresh temporary folder."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
        with running_chroma_server(tmp_path_factory.mktemp("chroma") / "data") as server:
            yield server

    return chroma
