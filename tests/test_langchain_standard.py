"""LangChain's own standard tests for `CDEEmbeddings` (langchain-tests), as partner packages run
them: the tiny checkpoint, with a context fitted on a small corpus at construction.

`init_from_env_params` is left unset: `CDEEmbeddings` reads no environment variable (the model
and its context are always passed explicitly), so LangChain's env test has nothing to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from cde_rag.langchain import CDEEmbeddings

TINY = Path(__file__).parent / "fixtures" / "tiny-cde-v2"
CORPUS = json.loads((TINY / "expected.json").read_text())["documents"]


class _CDEParams:
    @property
    def embeddings_class(self) -> type[CDEEmbeddings]:
        return CDEEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY), "device": "cpu", "corpus": CORPUS}


class TestCDEEmbeddingsUnit(_CDEParams, EmbeddingsUnitTests):
    pass


class TestCDEEmbeddingsIntegration(_CDEParams, EmbeddingsIntegrationTests):
    pass
