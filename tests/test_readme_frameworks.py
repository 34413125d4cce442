"""The README's "Keeping it up to date" snippets for LangChain and LlamaIndex run as written
(with the tiny checkpoint for the hub id), twice in the same folder, and print what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def snippet(heading: str) -> str:
    """The first Python block after `heading`."""
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize(
    ("heading", "printed"),
    [
        (
            "#### Keeping it up to date: LangChain's `index()`",
            ["{'num_added': 1, 'num_updated': 0, 'num_skipped': 1, 'num_deleted': 2}"],
        ),
        (
            "#### Keeping it up to date: LlamaIndex's `IngestionPipeline`",
            ["['rivers.txt']", "['rivers.txt', 'tides.txt']"],
        ),
    ],
)
def test_snippet_runs_and_reruns(heading, printed, tiny_path, tmp_path):
    code = snippet(heading).replace('"jxm/cde-small-v2"', repr(tiny_path))
    for _ in range(2):  # a second run in the same folder finds what the first stored
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.splitlines()[-len(printed) :] == printed
