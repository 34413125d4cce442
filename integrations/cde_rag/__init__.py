"""cde-rag: contextual document embeddings (jxm/cde-small-v2) for RAG applications.

The engine (torch, transformers) is imported on first use, so `import cde_rag.errors`, the CLI's
`--help` and its early error messages stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    CDEError,
    CheckpointError,
    ContextError,
    ContextMismatchError,
    DocumentError,
    InputError,
    NotFittedError,
    NumericalError,
    StorageFullError,
    UnsupportedTransformersError,
)

if TYPE_CHECKING:
    from .cache import EmbeddingCache
    from .context import CorpusContext, LegacyContextWarning, sample_minicorpus
    from .model import CDEModel, shared_model
    from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

__version__ = "0.1.0"

_LAZY = {
    "CDEModel": ".model",
    "shared_model": ".model",
    "CorpusContext": ".context",
    "LegacyContextWarning": ".context",
    "sample_minicorpus": ".context",
    "EmbeddingCache": ".cache",
    "DOCUMENT_PREFIX": ".tokenization",
    "QUERY_PREFIX": ".tokenization",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cde_rag' has no attribute {name!r}")


__all__ = [
    "DOCUMENT_PREFIX",
    "QUERY_PREFIX",
    "CDEError",
    "CDEModel",
    "CheckpointError",
    "ContextError",
    "ContextMismatchError",
    "CorpusContext",
    "DocumentError",
    "EmbeddingCache",
    "InputError",
    "LegacyContextWarning",
    "NotFittedError",
    "NumericalError",
    "StorageFullError",
    "UnsupportedTransformersError",
    "__version__",
    "sample_minicorpus",
    "shared_model",
]
