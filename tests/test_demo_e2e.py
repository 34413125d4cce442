"""The demo end to end: `cde-rag demo` as a real process, driven by a real Chromium.

Two browser sessions share one index: session A uploads two files, indexes them, asks, and
sees an answer with citations and the sources; session B sees the same index, asks its own
question without touching A's chat, gets a clear reason for a hostile binary upload, and is
answered while A indexes another file.
The page may not reach anything but the demo's own address.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cde_rag.demo_app import bundled_samples_dir

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "cde-rag")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SAMPLES = [bundled_samples_dir() / "tea-brewing.md", bundled_samples_dir() / "tea-history.txt"]
SCREENSHOT = ROOT / "test-artifacts" / "demo.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.server,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tiny_path, tmp_path_factory):
    """`cde-rag demo` on 127.0.0.1 with the tiny checkpoint, in its own process."""
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_TEMP_DIR": str(tmp / "uploads"),
        "HF_HUB_OFFLINE": "1",
        # ingest's test hook: pause 2 s per progress step, so the progress bar can be seen
        # and a question can be asked while indexing runs.
        "CDE_RAG_TEST_STEP_DELAY": "2.0",
    }
    for name in ("CDE_RAG_LLM_BASE_URL", "CDE_RAG_LLM_MODEL", "CDE_RAG_LLM_API_KEY"):
        env.pop(name, None)
    log = (tmp / "demo.log").open("w")
    proc = subprocess.Popen(
        [CLI, "demo", "--model", tiny_path, "--data", str(tmp / "data"), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"demo exited with {proc.returncode}:\n{(tmp / 'demo.log').read_text()}"
                )
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo did not start:\n{(tmp / 'demo.log').read_text()}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_session(browser, url: str, outside: list[str]):
    """A new browser context (a separate Gradio session) that may only talk to the demo."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def guard(route):
        if route.request.url.startswith((url, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_function(
        "document.querySelector('#status') && document.querySelector('#status').innerText"
        ".match(/Nothing indexed yet|Indexed:/)",
        polling=100,
    )
    return page


def wait_for_text(page, selector: str, text: str) -> str:
    # Poll on a timer: the default (animation frames) stalls in a page that is not in front.
    page.wait_for_function(
        "([s, t]) => document.querySelector(s) && document.querySelector(s).innerText.includes(t)",
        arg=[selector, text],
        polling=100,
    )
    return page.inner_text(selector)


def upload(page, paths: list[Path]) -> None:
    page.set_input_files("#files input[type=file]", [str(p) for p in paths])
    for path in paths:  # the upload shows each name as stem and extension apart
        wait_for_text(page, "#files", path.stem)


def ask(page, question: str) -> str:
    before = page.locator("#chatbot .message").count()
    page.fill("#question textarea", question)
    page.press("#question textarea", "Enter")
    page.wait_for_function(
        "n => document.querySelectorAll('#chatbot .message').length >= n + 2",
        arg=before,
        polling=100,
    )
    return wait_for_text(page, "#chatbot", "[1]")


def test_upload_index_ask_in_two_sessions(demo_url, browser, tmp_path):
    outside: list[str] = []
    a = open_session(browser, demo_url, outside)
    assert "Nothing indexed yet" in a.inner_text("#status")
    assert "No corpus context yet" in a.inner_text("#context")

    upload(a, SAMPLES)
    a.click("#index")
    # The progress bar names each phase as it runs.
    wait_for_text(a, "#status", "Embedding and storing chunks")
    status = wait_for_text(a, "#status", "Indexed 2 files")
    assert "fitted on these chunks" in status
    assert "tea-brewing.md" in status and "tea-history.txt" in status
    context = wait_for_text(a, "#context", "context fingerprint")
    assert "seed 42" in context and "N = 32" in context

    chat = ask(a, "What water temperature is best for green tea?")
    assert "What water temperature is best for green tea?" in chat
    sources = a.inner_text("#sources")
    assert "tea-brewing.md" in sources or "tea-history.txt" in sources
    # Every citation in the answer has its row in the sources panel.
    answer = a.locator("#chatbot .message").last.inner_text()
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    numbers = a.locator('#sources [role=gridcell][data-col="0"]').all_inner_texts()
    assert numbers == ["1", "2"]  # two files of one chunk each, both retrieved
    assert cited and cited <= {1, 2}

    a.click("#compare")
    wait_for_text(a, "#compare-note", "Ranked all")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    a.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 20_000

    # Session B: same shared index, its own chat.
    b = open_session(browser, demo_url, outside)
    assert "Indexed: 2 files" in b.inner_text("#status")
    assert "[1]" not in b.inner_text("#chatbot")
    ask(b, "Who wrote The Classic of Tea?")
    assert "Classic of Tea" not in a.inner_text("#chatbot")
    assert "green tea" in a.inner_text("#chatbot")

    # A hostile upload: binary content under a name full of markup.
    hostile = tmp_path / "<img src=x onerror=alert(1)>.txt"
    hostile.write_bytes(b"\x00\x01\x02" * 200)
    upload(b, [hostile])
    b.click("#index")
    status = wait_for_text(b, "#status", "Nothing indexed")
    assert "binary data" in status and "onerror=alert(1)" in status
    assert b.locator("#status img").count() == 0
    assert "Indexed: 2 files" in status  # nothing already stored was lost

    # Session A indexes a third file; session B's question is answered meanwhile.
    upload(a, [bundled_samples_dir() / "tea-shop.html"])
    a.click("#index")
    wait_for_text(a, "#status", "Embedding and storing chunks")
    ask(b, "When is the shop open?")
    assert "Indexed: 3 files" not in a.inner_text("#status")  # A's indexing still running
    wait_for_text(a, "#status", "Indexed: 3 files")

    assert outside == []
    a.context.close()
    b.context.close()
