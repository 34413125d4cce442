"""Framework helpers that moved to the adapters; kept for one release, with a DeprecationWarning.

The adapters build on cde_rag.chroma, not the other way round: use
`cde_rag.langchain.CDEEmbeddings.from_chroma(collection)` and
`cde_rag.llama_index.CDEEmbedding.from_chroma(collection)`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from chromadb.api.models.Collection import Collection

if TYPE_CHECKING:
    from ..langchain import CDEEmbeddings
    from ..llama_index import CDEEmbedding


def _moved(old: str, new: str) -> None:
    warnings.warn(
        f"cde_rag.chroma.{old}(collection) is deprecated and will be removed in the next "
        f"release; use {new}(collection) instead.",
        DeprecationWarning,
        stacklevel=3,
    )


def langchain_embeddings(collection: Collection, **kwargs: Any) -> CDEEmbeddings:
    """Deprecated: use `cde_rag.langchain.CDEEmbeddings.from_chroma(collection)`."""
    _moved("langchain_embeddings", "cde_rag.langchain.CDEEmbeddings.from_chroma")
    from ..langchain import CDEEmbeddings

    return CDEEmbeddings.from_chroma(collection, **kwargs)


def llama_index_embedding(collection: Collection, **kwargs: Any) -> CDEEmbedding:
    """Deprecated: use `cde_rag.llama_index.CDEEmbedding.from_chroma(collection)`."""
    _moved("llama_index_embedding", "cde_rag.llama_index.CDEEmbedding.from_chroma")
    from ..llama_index import CDEEmbedding

    return CDEEmbedding.from_chroma(collection, **kwargs)
