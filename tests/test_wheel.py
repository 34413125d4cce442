"""cde-rag works installed from a wheel, run from an empty folder: nothing at runtime reads the
checkout's tests/, demo/ or examples/.

The wheel is built once from a copy of the sources and installed, as the README says
(`pip install "WHEEL[all]"`), into one new virtualenv outside the checkout, shared by this
module's tests. Its dependencies come from this environment's site-packages through a .pth
line, so pip finds every requirement of `[all]` installed and downloads nothing (no torch);
that folder's own .pth files, among them the editable install of the checkout, are not
processed, so `cde_rag` is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SAMPLES = ["tea-brewing.md", "tea-history.txt", "tea-shop.html"]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv with the wheel installed, an empty working folder, env)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "integrations",
        source / "integrations",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CDE_RAG_"))}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), "."],
        source,
        env,
    )
    (wheel,) = (tmp / "dist").glob("cde_rag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cde_rag/assets/bench/backbone/tokenizer.json" in names
    assert "cde_rag/assets/eval-sample/qrels/test.tsv" in names
    assert all(f"cde_rag/assets/samples/{name}" in names for name in SAMPLES)
    assert not any(name.startswith(("tests/", "demo/", "examples/")) for name in names)

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    bin_dir = venv / "bin"
    purelib = _run(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        tmp,
        env,
    ).stdout.strip()
    Path(purelib, "checkout-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    venv_pip = [str(bin_dir / "python"), *pip[1:]]
    # The venv's own setuptools would hide the newer one torch requires.
    _run([*venv_pip, "uninstall", "-y", "setuptools"], tmp, env)
    # The README's command, offline: every requirement of [all] must already be satisfied.
    _run([*venv_pip, "install", "--no-index", f"{wheel}[all]"], tmp, env)
    empty = tmp / "empty"
    empty.mkdir()
    env.update(
        HOME=str(tmp / "home"),
        XDG_CACHE_HOME=str(tmp / "xdg-cache"),
        XDG_DATA_HOME=str(tmp / "xdg-data"),
        HF_HUB_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    where = _run(
        [str(bin_dir / "python"), "-c", "import cde_rag; print(cde_rag.__file__)"], empty, env
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    return bin_dir, empty, env


def test_bench_quick_runs_from_an_empty_folder(installed):
    bin_dir, empty, env = installed
    done = _run([str(bin_dir / "cde-rag"), "bench", "--quick", "--json", "bench.json"], empty, env)
    assert "Using a small checkpoint (6 layers)" in done.stdout
    assert "| Chunking (1000/150 characters) |" in done.stdout
    assert (Path(env["XDG_CACHE_HOME"]) / "cde-rag" / "bench" / "quick-random").is_dir()
    assert (empty / "bench.json").is_file()


def test_eval_runs_on_the_bundled_sample(installed, tiny_path):
    bin_dir, empty, env = installed
    done = _run(
        [str(bin_dir / "cde-rag"), "eval", "--sample", "--model", tiny_path, "--no-fallback"],
        empty,
        env,
    )
    assert done.stdout.startswith("eval-sample (test): 26 documents, 12 queries")
    assert (empty / "cde-eval" / "eval-sample" / "report.json").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ASK_THE_DEMO = """
import sys
from gradio_client import Client

client = Client(sys.argv[1], verbose=False)
status, context, table, *_ = client.predict(api_name="/on_samples")
print(status, table, sep="\\nTABLE ")
chat, sources, *_ = client.predict(
    "How hot should the water be for green tea?", [], "", api_name="/on_ask"
)
print("SOURCES", repr(sources))
"""


def test_demo_starts_with_its_bundled_samples_and_indexes_them(installed, tiny_path):
    """`cde-rag demo` from an empty folder offers the samples shipped in the wheel, and its
    "Try the samples" button (its Gradio API endpoint) indexes them and answers from them."""
    bin_dir, empty, env = installed
    python = str(bin_dir / "python")
    listed = _run(
        [python, "-c", "from cde_rag.demo_app import sample_files; print(*sample_files())"],
        empty,
        env,
    ).stdout.split()
    assert [Path(p).name for p in listed] == SAMPLES
    assert all(Path(p).is_relative_to(bin_dir.parent) for p in listed), listed

    port = _free_port()
    log = empty.parent / "demo.log"
    data = empty.parent / "demo-data"
    args = [str(bin_dir / "cde-rag"), "demo", "--model", tiny_path, "--data", str(data)]
    server = subprocess.Popen(
        [*args, "--port", str(port)],
        cwd=empty,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, f"the demo did not answer\n{log.read_text()}"
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        asked = _run([python, "-c", ASK_THE_DEMO, url], empty, env, timeout=300).stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    status, rest = asked.split("\nTABLE ")
    table, sources = rest.split("\nSOURCES ")
    assert "**Indexed 3 files**" in status, status
    assert all(name in table for name in SAMPLES), table
    assert any(name in sources for name in SAMPLES), sources


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("chroma_quickstart.py", "same ranking after reopening: True"),
        ("langchain_rag.py", "hit: "),
        ("llama_index_rag.py", "hit: "),
    ],
)
def test_example_runs_from_an_empty_folder(installed, tiny_path, tmp_path, script, expected):
    """The examples, copied out of the checkout, run with the installed package alone."""
    bin_dir, _, env = installed
    folder = tmp_path / "example"
    folder.mkdir()
    shutil.copy(ROOT / "examples" / script, folder / script)
    done = _run([str(bin_dir / "python"), script, tiny_path], folder, env, timeout=300)
    assert expected in done.stdout, done.stdout
    assert "context: " in done.stdout
