"""Index files into a cde-rag Chroma collection, resumably; query it back.

Ingestion runs in four phases: load files, chunk them, fit the corpus context on *all* chunks
(only when the collection is new: an existing collection keeps the context its vectors were
embedded with), then embed and store the chunks not stored yet. Chunk ids are derived from
content, and storing skips ids already in the collection, so a run killed at any moment is
finished by running it again: nothing is stored twice, nothing is lost, the context stays.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .cache import EmbeddingCache
from .context import DEFAULT_SEED
from .documents import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_PAGES,
    Chunk,
    Document,
    DocumentError,
    check_chunk_sizes,
    chunk_documents,
    load_documents,
)
from .errors import CDEError, StorageFullError
from .model import CDEModel, DTypeLike

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

ProgressCallback = Callable[[str, int, int], None]
"""`progress(phase, done, total)`; phases are "load", "chunk", "context", "store"."""
PHASES = ("load", "chunk", "context", "store")
# Collection metadata recording how its files were chunked.
_CHUNK_SIZE_KEY = "cde_rag_chunk_size"
_CHUNK_OVERLAP_KEY = "cde_rag_chunk_overlap"
# Chroma's rule for the characters of a name (cde_rag.chroma limits the length).
_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]")


@dataclass(frozen=True)
class IndexReport:
    """What an indexing run did.

    `chunks` = `added` + `skipped`: chunks embedded and stored now, and chunks an earlier run
    had stored already. `errors` lists `(path, reason)` for files that could not be read.
    """

    collection: str
    files: int
    chunks: int
    added: int
    skipped: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    context: str = ""
    new_collection: bool = False

    def summary(self) -> str:
        how = "fitted on these chunks" if self.new_collection else "kept from the collection"
        return (
            f"Indexed {_plural(self.files, 'file')} into {self.collection!r}: "
            f"{_plural(self.chunks, 'chunk')}, {self.added} added, {self.skipped} already "
            f"stored, {_plural(len(self.errors), 'file')} skipped; context {self.context[:12]} "
            f"({how})."
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: `score` is cosine similarity (1 is identical)."""

    rank: int
    id: str
    text: str
    source: str
    chunk: int
    score: float
    metadata: dict[str, Any]


def index_paths(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    client: ClientAPI,
    collection: str,
    model: str | os.PathLike[str] | CDEModel | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    seed: int = DEFAULT_SEED,
    recursive: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_chars: int = DEFAULT_MAX_CHARS,
    batch_size: int | None = None,
    embedding_cache: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> IndexReport:
    """Load files and folders, then `index_documents` them (see there). Unreadable files, and
    files over the caps (`max_bytes`, `max_pages`, `max_chars`: see `load_document`), are
    skipped and reported in `IndexReport.errors`; if no file at all can be read,
    `DocumentError`."""
    check_collection_name(collection)
    check_chunk_sizes(chunk_size, chunk_overlap)
    report = _Reporter(progress, show_progress)
    try:
        loaded = load_documents(
            paths,
            recursive=recursive,
            max_bytes=max_bytes,
            max_pages=max_pages,
            max_chars=max_chars,
            progress=lambda done, total: report("load", done, total),
        )
    finally:
        report.close()
    if not loaded.documents:
        detail = "; ".join(f"{p}: {why}" for p, why in loaded.skipped[:3]) or "no files given"
        more = f" (and {len(loaded.skipped) - 3} more)" if len(loaded.skipped) > 3 else ""
        raise DocumentError(
            f"Nothing to index: no readable .txt/.md/.pdf/.html file among the paths given "
            f"({detail}{more})."
        )
    result = index_documents(
        loaded.documents,
        client=client,
        collection=collection,
        model=model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        seed=seed,
        batch_size=batch_size,
        embedding_cache=embedding_cache,
        device=device,
        dtype=dtype,
        show_progress=show_progress,
        progress=report,
    )
    return replace(result, errors=list(loaded.skipped))


def index_documents(
    documents: Sequence[Document],
    *,
    client: ClientAPI,
    collection: str,
    model: str | os.PathLike[str] | CDEModel | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    seed: int = DEFAULT_SEED,
    batch_size: int | None = None,
    embedding_cache: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> IndexReport:
    """Chunk documents, fit the context (new collection only), embed and store new chunks.

    `model` defaults to cde-small-v2 for a new collection and to the collection's own model
    for an existing one (passing one there must name the same model). `embedding_cache` is a
    SQLite file that keeps computed vectors, so re-indexing the same chunks under the same
    context re-embeds nothing.
    """
    from . import chroma

    check_collection_name(collection)
    # Opened first, so an unusable cache path fails before any fitting.
    cache = EmbeddingCache(embedding_cache) if embedding_cache is not None else None
    # index_paths passes its own reporter on, so its bars and hooks carry over.
    report = progress if isinstance(progress, _Reporter) else _Reporter(progress, show_progress)
    try:
        report("chunk", 0, len(documents))
        chunks = chunk_documents(documents, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        report("chunk", len(documents), len(documents))
        if not chunks:
            raise DocumentError("Nothing to index: the documents have no text to chunk.")
        chunking = {_CHUNK_SIZE_KEY: chunk_size, _CHUNK_OVERLAP_KEY: chunk_overlap}
        store, new = _open_or_create(
            client, collection, chunks, chunking, model, seed, device, dtype, show_progress, report
        )
        # The model is shared process-wide: lend it the cache for this run only.
        store_model = chroma.get_model(store)
        previous = store_model.embedding_cache
        if cache is not None:
            store_model.use_embedding_cache(cache)
        try:
            added = chroma.add_documents(
                store,
                [c.text for c in chunks],
                ids=[c.id for c in chunks],
                metadatas=[c.metadata for c in chunks],
                batch_size=batch_size,
                show_progress=False,
                progress=lambda done, total: report(
                    "store", done + len(chunks) - total, len(chunks)
                ),
            )
        finally:
            if cache is not None:
                store_model.use_embedding_cache(previous)
    except CDEError:
        raise
    except Exception as exc:
        full = _full_disk(exc, client, embedding_cache)
        if full is None:
            raise
        raise full from exc
    finally:
        report.close()
    return IndexReport(
        collection=collection,
        files=len(documents),
        chunks=len(chunks),
        added=added.added,
        skipped=added.skipped,
        context=chroma.get_context(store).fingerprint,
        new_collection=new,
    )


# Below this much free space, a failed write to the store or the cache is put down to a full
# disk (Chroma reports one as "Error in compaction ...", SQLite as "database or disk is full").
LOW_SPACE_BYTES = 64 * 1024 * 1024


def _full_disk(
    exc: Exception, client: ClientAPI, cache: str | os.PathLike[str] | None
) -> StorageFullError | None:
    """Name a full disk as the cause of `exc`, with the remedy, when the store's folder or the
    cache's is (nearly) out of space; None when neither is."""
    settings = client.get_settings()
    places = [Path(settings.persist_directory)] if settings.is_persistent else []
    if cache is not None:
        places.append(Path(cache).parent)
    for place in places:
        try:
            free = shutil.disk_usage(place).free
        except OSError:
            continue
        if free < LOW_SPACE_BYTES:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            return StorageFullError(
                f"No space left on the disk holding {place} ({free:,} bytes free), so writing "
                f"failed ({detail}). Free space there (or index into a --db on a larger disk), "
                "then run the same command again: chunks already stored are kept and skipped."
            )
    return None


def check_collection_name(name: str) -> str:
    """Refuse a name Chroma would refuse, before any file is read or context fitted."""
    from .chroma import MAX_NAME_LENGTH

    if (
        not isinstance(name, str)
        or not 3 <= len(name) <= MAX_NAME_LENGTH
        or not _COLLECTION_NAME.fullmatch(name)
    ):
        raise ValueError(
            f"Invalid collection name {name!r}: use 3-{MAX_NAME_LENGTH} characters from a-z, "
            "A-Z, 0-9, '.', '_' and '-', starting and ending with a letter or digit."
        )
    return name


def _open_or_create(
    client: ClientAPI,
    name: str,
    chunks: list[Chunk],
    chunking: dict[str, int],
    model: str | os.PathLike[str] | CDEModel | None,
    seed: int,
    device: str | None,
    dtype: DTypeLike,
    show_progress: bool | None,
    report: _Reporter,
) -> tuple[Collection, bool]:
    from chromadb.errors import NotFoundError

    from . import chroma

    try:
        store = chroma.open_collection(client, name, model=model, device=device, dtype=dtype)
    except NotFoundError:
        pass
    else:
        _check_chunking(store, chunking)
        return store, False
    report("context", 0, 1)
    store = chroma.create_collection(
        client,
        name,
        model=model if model is not None else chroma.DEFAULT_MODEL,
        corpus=[c.text for c in chunks],
        seed=seed,
        device=device,
        dtype=dtype,
        metadata=chunking,
        get_or_create=True,  # another process may create it meanwhile: then use its context
        show_progress=show_progress,
    )
    report("context", 1, 1)
    _check_chunking(store, chunking)
    return store, True


def _check_chunking(store: Collection, chunking: dict[str, int]) -> None:
    """Refuse to chunk a collection's files a second way: both sets of chunks would be kept,
    so every passage would be stored (and retrieved) twice."""
    meta = store.metadata or {}
    recorded = {key: meta[key] for key in chunking if key in meta}
    if recorded and recorded != chunking:
        raise ValueError(
            f"Collection {store.name!r} was indexed with chunk size "
            f"{recorded.get(_CHUNK_SIZE_KEY)} and overlap {recorded.get(_CHUNK_OVERLAP_KEY)}; "
            f"this run uses {chunking[_CHUNK_SIZE_KEY]} and {chunking[_CHUNK_OVERLAP_KEY]}, "
            "which would store every passage twice. Use the same values, or index into a new "
            "collection."
        )


class _Reporter:
    """Sends phase progress to the caller's callback, or to one tqdm bar per phase."""

    def __init__(self, callback: ProgressCallback | None, show: bool | None):
        self.callback = callback
        self.show = show is not False and callback is None
        self.bar: Any = None
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(phase, done, total)
        elif self.show:
            if phase != self.phase:
                self.close()
                self.phase = phase
                desc = _LABELS[phase]
                if phase == "store" and done:  # a resumed run: say what it skips
                    desc += f" ({done} already stored)"
                self.bar = tqdm(total=total, initial=done, desc=desc, unit=_UNITS[phase])
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_LABELS = {
    "load": "Reading files",
    "chunk": "Chunking",
    "context": "Corpus context",
    "store": "Embedding+storing",
}
_UNITS = {"load": "file", "chunk": "doc", "context": "fit", "store": "chunk"}


# -- querying ---------------------------------------------------------------------------------


def check_query(query: str, k: int) -> None:
    """Refuse an empty query or a bad k before any model is loaded."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("The query is empty; pass the question or text to search for.")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")


def query_collection(
    collection: Collection,
    query: str,
    *,
    k: int = 5,
    where: dict[str, Any] | None = None,
) -> list[Hit]:
    """The `k` chunks nearest to `query`, best first, embedded with the collection's context."""
    from . import chroma

    check_query(query, k)
    model = chroma.get_model(collection)
    vector = model.embed_queries([query], context=chroma.get_context(collection))
    found = collection.query(
        query_embeddings=vector,
        n_results=k,
        where=where,
        include=["documents", "metadatas", "distances"],  # type: ignore[list-item]
    )
    hits = []
    rows = zip(
        found["ids"][0],
        (found["documents"] or [[]])[0],
        (found["metadatas"] or [[]])[0],
        (found["distances"] or [[]])[0],
        strict=True,
    )
    for rank, (doc_id, text, meta, distance) in enumerate(rows, 1):
        meta = dict(meta or {})
        hits.append(
            Hit(
                rank=rank,
                id=doc_id,
                text=text or "",
                source=str(meta.get("source", "")),
                chunk=int(meta.get("chunk", -1)),
                score=1.0 - float(distance),
                metadata=meta,
            )
        )
    return hits
