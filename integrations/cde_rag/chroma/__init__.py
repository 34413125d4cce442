"""Chroma collections that carry their corpus context, so every process embeds with the same one.

A CDE vector is only meaningful next to the context it was embedded with. This package keeps that
context *inside Chroma*, next to the collection, so it travels with a `PersistentClient` folder
and works the same against a Chroma server (`HttpClient`):

- the collection's embedding function is `CDEEmbeddingFunction`, registered with Chroma, whose
  small config names the model, the context fingerprint and the companion collection holding it;
- the companion collection stores the context's N rows in order (embeddings, minicorpus texts as
  documents) and the rest of the context record as collection metadata;
- a collection is created *after* its companion is complete, so a crash never leaves a collection
  without its context; reopening checks the companion against the fingerprint.

Chroma rebuilds embedding functions from their config on every collection operation, so building
one is cheap: the model is shared process-wide and loads on first use, and each context is read
from Chroma once per process and cached by fingerprint.

One module per job: `context_store` (the companion collection and the context cache),
`embedding_function` (the function registered with Chroma), `collection` (create, open, delete,
and what a collection records), `records` (adding documents), `sources` (keeping a source's
records in step with it: update, delete, list), `rebuild` (moving to a new context), `tracking`
(what changed since the fit) and `status` (how stale the context is: counts and drift).
Every use of chromadb internals goes through `_compat`, which checks the chromadb version. The
LangChain and LlamaIndex helpers are the adapters' `from_chroma` (the old functions here are
deprecated).
"""

from __future__ import annotations

from .._adapters import DEFAULT_MODEL
from ..drift import REFIT_THRESHOLD, drift_score
from ._deprecated import langchain_embeddings, llama_index_embedding
from .collection import (
    MAX_NAME_LENGTH,
    CollectionExistsError,
    create_collection,
    delete_collection,
    get_context,
    get_model,
    open_collection,
)

# Not in __all__, but imported from here by earlier code and tests.
from .context_store import context_collection_name  # noqa: F401
from .context_store import write_context as _write_context  # noqa: F401
from .embedding_function import EF_NAME, CDEEmbeddingFunction
from .rebuild import rebuild_collection
from .records import AddResult, add_documents, document_id
from .sources import (
    SourceInfo,
    SourceRecords,
    SyncResult,
    delete_source,
    list_sources,
    update_source,
    update_sources,
)
from .status import ContextStatus, context_status

__all__ = [
    "DEFAULT_MODEL",
    "EF_NAME",
    "MAX_NAME_LENGTH",
    "REFIT_THRESHOLD",
    "AddResult",
    "CDEEmbeddingFunction",
    "CollectionExistsError",
    "ContextStatus",
    "SourceInfo",
    "SourceRecords",
    "SyncResult",
    "add_documents",
    "context_status",
    "create_collection",
    "delete_collection",
    "delete_source",
    "document_id",
    "drift_score",
    "get_context",
    "get_model",
    "langchain_embeddings",
    "list_sources",
    "llama_index_embedding",
    "open_collection",
    "rebuild_collection",
    "update_source",
    "update_sources",
]
