"""Real `cde-rag serve` servers for tests: a subprocess (the CLI as users run it) or uvicorn in
a thread of the test process (fast to start, shares the test's model). Both bind 127.0.0.1 on a
free port and are stopped by the test that started them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def serve_command(model_path: str, port: int, data_dir: Path, *args: str) -> list[str]:
    """The `cde-rag serve` command line the tests run (CPU, 50 ms batch window)."""
    return [
        sys.executable,
        "-m",
        "cde_rag.cli",
        "serve",
        "--model",
        model_path,
        "--device",
        "cpu",
        "--port",
        str(port),
        "--data",
        str(data_dir),
        "--batch-wait-ms",
        "50",
        *args,
    ]


class ServerProcess:
    """`cde-rag serve` in a subprocess, on a fresh port each start, logging to a file.

    `wrapper` runs the server under another command (e.g. `unshare` for a private mount), which
    must `exec` it so that the process started is the server itself.
    """

    def __init__(self, model_path: str, data_dir: Path, log_dir: Path, wrapper: Sequence[str] = ()):
        self.model_path = model_path
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.wrapper = list(wrapper)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> str:
        return (self.log_dir / f"server-{self.starts}.log").read_text(errors="replace")

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.starts += 1
        command = self.wrapper + serve_command(self.model_path, self.port, self.data_dir, *args)
        full_env = {k: v for k, v in os.environ.items() if k != "CDE_RAG_API_KEY"}
        full_env.update(env or {})
        with open(self.log_dir / f"server-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=full_env
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not answer /health in {STARTUP_TIMEOUT}s:\n{self.log}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def memory_mb(self, field: str = "VmRSS") -> float:
        """The server's resident memory (`VmRSS`) or its peak so far (`VmHWM`), in MB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)


class ThreadServer:
    """An ASGI app served by uvicorn in a thread of the test process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host=HOST, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
