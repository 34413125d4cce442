"""Load an embeddings folder (the output of `cde_rag.ray.index_folder`) into Chroma.

The collection is created through `cde_rag.chroma` with the folder's context, so it has the
layout every reader of cde-rag collections expects (`cde-rag query`, the demo, the adapters),
exactly as if `cde-rag index` had made it. The precomputed vectors go through the same storing
path as embedded ones (`store_missing`): ids already stored are skipped, so loading twice, or
loading a resumed job's output again, stores nothing twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .chroma.records import check_records, store_missing
from .embeddings_folder import EMBEDDING, EmbeddingsFolder, EmbeddingsFolderError, load_progress
from .errors import ContextMismatchError
from .ingest import CHUNK_OVERLAP_KEY, CHUNK_SIZE_KEY, check_chunking, check_collection_name

if TYPE_CHECKING:
    import pyarrow as pa
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from .context import CorpusContext
    from .model import CDEModel

# Rows read from the folder and stored per Chroma write: bounded memory, few round trips.
DEFAULT_LOAD_BATCH = 1024
COLUMNS = ("id", "text", "metadata", EMBEDDING)


@dataclass(frozen=True)
class ChromaLoadReport:
    """What a load did: `added` rows are new, `rows` are in the collection now; `failed` rows
    of the folder had no embedding (their text was refused when embedding) and were left out."""

    collection: str
    rows: int
    added: int
    failed: int
    context: str
    new_collection: bool

    def summary(self) -> str:
        return (
            f"Loaded into Chroma collection {self.collection!r}: {self.added} rows added, "
            f"{self.rows} in the collection, {self.failed} without an embedding left out; "
            f"context {self.context[:12]}."
        )


def load_embeddings(
    path: str | os.PathLike[str],
    client: ClientAPI,
    collection: str,
    *,
    model: str | os.PathLike[str] | CDEModel | None = None,
    revision: str | None = None,
    device: str | None = None,
    batch_size: int = DEFAULT_LOAD_BATCH,
    show_progress: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChromaLoadReport:
    """Load a finished embeddings folder into the cde-rag collection `collection`.

    A new collection is created with the folder's context and chunking; an existing one must
    hold that context (else `ContextMismatchError`, before anything is written). `model` is
    where the folder's model is on this machine (default: the one its manifest names); it is
    loaded to check the context, never to embed. Rows stream a bounded batch at a time;
    `progress(done, total)` follows the rows read.
    """
    check_collection_name(collection)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    folder = EmbeddingsFolder(path)
    manifest, context = folder.finished()
    store, new = _open_or_create(
        client, collection, folder, manifest, context, model, revision, device
    )
    total = int(manifest.get("rows") or 0)
    added = 0
    with load_progress(f"Loading into {collection}", total, show_progress, progress) as advance:
        for batch in folder.embedded_batches(COLUMNS, batch_size, advance):
            added += _store_batch(store, batch, context.dim, folder)
    return ChromaLoadReport(
        collection=collection,
        rows=store.count(),
        added=added,
        failed=int(manifest.get("failed") or 0),
        context=context.fingerprint,
        new_collection=new,
    )


def _open_or_create(
    client: ClientAPI,
    name: str,
    folder: EmbeddingsFolder,
    manifest: dict[str, Any],
    context: CorpusContext,
    model: str | os.PathLike[str] | CDEModel | None,
    revision: str | None,
    device: str | None,
) -> tuple[Collection, bool]:
    """The collection, checked to hold the folder's context and chunking, and whether it is
    new."""
    from chromadb.errors import NotFoundError

    from . import chroma

    chunking = {
        CHUNK_SIZE_KEY: manifest.get("chunk_size"),
        CHUNK_OVERLAP_KEY: manifest.get("chunk_overlap"),
    }
    try:
        store = chroma.open_collection(client, name, model=model, device=device)
    except NotFoundError:
        store = chroma.create_collection(
            client,
            name,
            model=model if model is not None else manifest["model"],
            context=context,
            revision=revision or manifest.get("revision"),
            device=device,
            metadata=chunking,
            get_or_create=True,  # another loader may create it meanwhile: then check it
        )
        new = True
    else:
        new = False
    stored = chroma.get_context(store)
    if stored.fingerprint != context.fingerprint:
        raise ContextMismatchError(
            f"Chroma collection {name!r} holds vectors embedded with context "
            f"{stored.fingerprint[:12]}, but {folder.location} was embedded with "
            f"{context.fingerprint[:12]}; mixing them would make search results meaningless. "
            "Load it into a new collection, or embed the files again with the collection's "
            f"context: cde-rag context save --collection {name} -o NEW_OUT/context.safetensors, "
            "then cde-rag index FILES --engine ray --out NEW_OUT, and load NEW_OUT."
        )
    check_chunking(store, chunking)
    return store, new


def _store_batch(
    store: Collection, batch: pa.RecordBatch, dim: int, folder: EmbeddingsFolder
) -> int:
    """Store the batch's rows the collection lacks; returns how many were added."""
    vectors_type = batch.schema.field(EMBEDDING).type
    if getattr(vectors_type, "list_size", None) != dim:
        raise EmbeddingsFolderError(
            f"{folder.location} holds embeddings of type {vectors_type}, but its context has "
            f"dimension {dim}: the folder was altered. Run the embedding job into a new folder."
        )
    ids = batch.column("id").to_pylist()
    texts = batch.column("text").to_pylist()
    metadatas = [json.loads(m) if m else None for m in batch.column("metadata").to_pylist()]
    vectors = batch.column(EMBEDDING).flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), dim)
    check_records(texts, ids, metadatas, batch_size=None)
    result = store_missing(
        store,
        texts,
        ids,
        lambda positions: vectors[positions],
        metadatas=metadatas,
        batch_size=len(ids),
        show_progress=False,
    )
    return result.added


__all__ = ["DEFAULT_LOAD_BATCH", "ChromaLoadReport", "load_embeddings"]
