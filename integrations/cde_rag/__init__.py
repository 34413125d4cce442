"""cde-rag: contextual document embeddings (jxm/cde-small-v2) for RAG applications."""

from .context import CorpusContext, sample_minicorpus
from .errors import (
    CDEError,
    CheckpointError,
    ContextError,
    ContextMismatchError,
    InputError,
    NotFittedError,
)
from .model import CDEModel, shared_model
from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

__version__ = "0.1.0"

__all__ = [
    "DOCUMENT_PREFIX",
    "QUERY_PREFIX",
    "CDEError",
    "CDEModel",
    "CheckpointError",
    "ContextError",
    "ContextMismatchError",
    "CorpusContext",
    "InputError",
    "NotFittedError",
    "__version__",
    "sample_minicorpus",
    "shared_model",
]
