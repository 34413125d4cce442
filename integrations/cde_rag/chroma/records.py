"""Adding documents to a cde-rag collection: stable ids, skip what is stored, embed in batches.

Ids are stable (given, or derived from the text), and ids already stored are skipped before
anything is embedded, so re-running an interrupted ingestion finishes it without duplicates or
re-embedding. `store_missing` is the storing half on its own: it takes a function that gives
the vectors of a batch, so vectors computed elsewhere go through the same path as embedded ones.
Vectors are computed by the collection's model with its stored context, or through a wrapper of
that model such as `CachedEmbedder`, which adds a cache without changing the shared model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection
from tqdm.auto import tqdm

from ..cached import CachedEmbedder
from ..errors import InputError
from ..model import CDEModel, check_texts
from ..progress import progress_bar_enabled
from ._compat import server_of
from .collection import bound_function

DEFAULT_ADD_BATCH = 128

ProgressCallback = Callable[[int, int], None]
# The vectors of the records at these positions, in that order (one row each).
VectorsFor = Callable[[list[int]], np.ndarray]
# What embeds documents for a collection: its model, or a wrapper of it such as a cache.
Embedder = CDEModel | CachedEmbedder


@dataclass(frozen=True)
class AddResult:
    """What `add_documents` did: documents embedded and stored, and ones already there."""

    added: int
    skipped: int


def document_id(text: str) -> str:
    """A stable id derived from a document's text, so re-running an ingestion adds nothing twice."""
    if not isinstance(text, str):
        raise InputError(f"document_id needs a str, got {type(text).__name__}.")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def add_documents(
    collection: Collection,
    documents: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    metadatas: Sequence[dict[str, Any] | None] | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
    embedder: Embedder | None = None,
) -> AddResult:
    """Embed and store documents not already in the collection, in batches.

    Ids are stable (given, or `document_id(text)`), and ids already stored are skipped before
    embedding, so re-running an interrupted ingestion finishes it without duplicates or
    re-embedding. `progress(done, total)` is called after each batch (total = documents to embed).
    `embedder` embeds instead of the collection's model: a wrapper of that same model, e.g. a
    `cde_rag.cached.CachedEmbedder` (another model's is refused).
    """
    texts = check_texts(documents, "documents")
    id_list = check_records(texts, ids, metadatas, batch_size)
    return store_missing(
        collection,
        texts,
        id_list,
        embedding(collection, texts, embedder),
        metadatas=metadatas,
        batch_size=batch_size,
        show_progress=show_progress,
        progress=progress,
    )


def embedding(
    collection: Collection, texts: list[str], embedder: Embedder | None = None
) -> VectorsFor:
    """The vectors of `texts[positions]`, embedded with the collection's stored context by its
    model (or by `embedder`, which must wrap the same model: the context check refuses others)."""
    ef = bound_function(collection)
    embed = (embedder or ef.model).embed_documents

    def vectors_for(positions: list[int]) -> np.ndarray:
        return embed([texts[i] for i in positions], context=ef.context, show_progress=False)

    return vectors_for


def check_records(
    texts: list[str],
    ids: Sequence[str] | None,
    metadatas: Sequence[dict[str, Any] | None] | None,
    batch_size: int | None,
) -> list[str]:
    """The records' ids (given, or derived from the texts), once the inputs are checked."""
    if ids is None:
        id_list = [document_id(t) for t in texts]
    else:
        id_list = check_texts(ids, "ids")
        if len(id_list) != len(texts):
            raise InputError(f"Got {len(id_list)} ids for {len(texts)} documents; pass one each.")
        if any(not i for i in id_list):
            raise InputError("ids must be non-empty strings.")
    if metadatas is not None and len(metadatas) != len(texts):
        raise InputError(
            f"Got {len(metadatas)} metadatas for {len(texts)} documents; pass one each (or None)."
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return id_list


def store_missing(
    collection: Collection,
    texts: list[str],
    ids: list[str],
    vectors_for: VectorsFor,
    *,
    metadatas: Sequence[dict[str, Any] | None] | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> AddResult:
    """Store the records whose ids the collection lacks, with the vectors `vectors_for` gives.

    Takes records `check_records` passed; the caller answers for the vectors being made with the
    collection's stored context.
    """
    size = min(batch_size or DEFAULT_ADD_BATCH, server_of(collection).get_max_batch_size())
    unique = _first_of_each_id(ids, texts)
    stored: set[str] = set()
    for chunk in in_batches([ids[i] for i in unique], size):
        stored.update(collection.get(ids=list(chunk), include=[])["ids"])
    todo = [i for i in unique if ids[i] not in stored]

    total = len(todo)
    show = progress_bar_enabled(show_progress, count=total)
    if progress is not None:
        progress(0, total)
    done = 0
    with tqdm(
        total=total, desc=f"Adding to {collection.name}", unit="doc", disable=not show
    ) as bar:
        for chunk in in_batches(todo, size):
            positions = list(chunk)
            collection.add(
                ids=[ids[i] for i in positions],
                embeddings=vectors_for(positions),
                documents=[texts[i] for i in positions],
                metadatas=[metadatas[i] or None for i in positions]  # type: ignore[misc]
                if metadatas is not None
                else None,
            )
            done += len(positions)
            bar.update(len(positions))
            if progress is not None:
                progress(done, total)
    return AddResult(added=total, skipped=len(texts) - total)


def _first_of_each_id(id_list: list[str], texts: list[str]) -> list[int]:
    """Positions of each id's first record; an id given for two different texts is refused."""
    first: dict[str, int] = {}
    for index, (doc_id, text) in enumerate(zip(id_list, texts, strict=True)):
        seen = first.setdefault(doc_id, index)
        if seen != index and texts[seen] != text:
            raise InputError(
                f"Id {doc_id!r} is given for two different documents (#{seen} and #{index}); "
                "ids must identify one document each."
            )
    return list(first.values())


def in_batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
