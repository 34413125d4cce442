"""cde-rag works installed from a wheel, run from an empty folder: nothing at runtime reads the
checkout's tests/, demo/ or examples/.

The wheel is built from a copy of the sources and installed into a new virtualenv outside the
checkout. Its dependencies come from this environment's site-packages through a .pth line (a
fresh download of torch and the rest is not possible offline); that folder's own .pth files,
among them the editable install of the checkout, are not processed, so `cde_rag` is the
wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
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
    _run([*venv_pip, "install", "--no-deps", "--no-index", str(wheel)], tmp, env)
    empty = tmp / "empty"
    empty.mkdir()
    env.update(
        XDG_CACHE_HOME=str(tmp / "xdg-cache"),
        XDG_DATA_HOME=str(tmp / "xdg-data"),
        ANONYMIZED_TELEMETRY="False",
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
