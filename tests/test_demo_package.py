"""The demo's sample documents ship in the wheel and are found from any folder.

Built as a wheel and installed outside the checkout, `sample_files()` must find the bundled
samples inside the installed package (they once lived in the repository's demo/samples, which
an installed package cannot see).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"tea-brewing.md", "tea-history.txt", "tea-shop.html"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources, so the checkout gets no build/ folder."""
    tree = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", tree)
    shutil.copy(ROOT / "README.md", tree)
    shutil.copytree(
        ROOT / "integrations",
        tree / "integrations",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(out), str(tree)),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("cde_rag-*.whl")
    return built


def test_wheel_holds_the_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"cde_rag/assets/samples/{name}" for name in SAMPLES} <= names


def test_installed_package_offers_the_samples_from_an_empty_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-deps", "-q"),
            *("--target", str(target), str(wheel)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    script = (
        "import cde_rag\n"
        "from cde_rag.demo_app import sample_files\n"
        "print(cde_rag.__file__)\n"
        "for path in sample_files():\n"
        "    print(path, path.stat().st_size)\n"
    )
    # The wheel's copy comes first on the path, ahead of the checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    package, *lines = result.stdout.splitlines()
    assert Path(package).is_relative_to(target)
    paths = {Path(line.rsplit(" ", 1)[0]) for line in lines}
    assert {p.name for p in paths} == SAMPLES
    assert all(p.is_relative_to(target / "cde_rag" / "assets" / "samples") for p in paths)
    assert all(int(line.rsplit(" ", 1)[1]) > 100 for line in lines)
