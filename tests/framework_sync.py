"""Helpers for the tests that keep a framework's index in step with changing documents: the
real adapters recording the texts they are handed to embed (what a run embeds again, and what
it skips), and a later run in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import chromadb
from pydantic import PrivateAttr

from cde_rag.langchain import CDEEmbeddings
from cde_rag.llama_index import CDEEmbedding


class Recorded:
    """Texts in the order they were embedded; `take` returns them and starts afresh."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, texts: list[str]) -> list[str]:
        self.texts.extend(texts)
        return texts

    def take(self) -> list[str]:
        taken, self.texts = self.texts, []
        return taken


class _Recording:
    _recorded: Recorded

    @property
    def recorded(self) -> Recorded:
        return self._recorded


class RecordingEmbeddings(_Recording, CDEEmbeddings):
    _recorded: Recorded = PrivateAttr(default_factory=Recorded)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return super().embed_documents(self.recorded.add(texts))


class RecordingEmbedding(_Recording, CDEEmbedding):
    _recorded: Recorded = PrivateAttr(default_factory=Recorded)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return super()._get_text_embeddings(self.recorded.add(texts))


def chroma_client(folder: str | Path) -> chromadb.ClientAPI:
    """The Chroma database in `folder`/db."""
    return chromadb.PersistentClient(
        str(Path(folder) / "db"), settings=chromadb.Settings(anonymized_telemetry=False)
    )


def run_later(script: str, *args: str) -> dict[str, Any]:
    """Run `script` in a fresh Python process (it may import the test modules) and return the
    JSON object it prints last."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "ANONYMIZED_TELEMETRY": "False",
            "PYTHONPATH": str(Path(__file__).parent),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])
