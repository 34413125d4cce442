"""Index files into a cde-rag Chroma collection, resumably, keeping it in step; query it back.

Ingestion runs in five phases: load files, chunk them, fit the corpus context on *all* chunks
(only when the collection is new: an existing collection keeps the context its vectors were
embedded with), embed and store the chunks not stored yet, then remove what is out of date.
It streams: no pass holds more than a batch of documents and chunks (`STREAM_CHUNKS`, or one
file's chunks when a file has more), so memory does not grow with the folder. A first pass reads
each file to learn its version and chunk count; the fit reads again only the files holding the
chunks it samples (the same sample as a fit on the list of all chunks); storing reads them once
more, a batch at a time.
Each file (source) is synced, not just added to (`cde_rag.chroma.sources`): a file whose content
changed gets its new chunks, then loses its old ones; an unchanged file is recognised from the
version its stored chunks record and is not even chunked again; with `prune`, chunks of files gone
from the folders indexed are removed. Chunk ids are derived from content, storing skips ids
already in the collection and removing comes last, so a run killed at any moment is finished by
running it again: the collection then holds exactly what an uninterrupted run leaves.

Vectors go through the run's embedding cache by wrapping the model (`CachedEmbedder`); the model,
which the process may share, is never changed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from .cache import EmbeddingCache
from .cached import CachedEmbedder
from .context import DEFAULT_SEED, StreamedCorpus
from .documents import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_PAGES,
    SOURCE_RECORDS_KEY,
    SOURCE_VERSION_KEY,
    Chunk,
    Document,
    DocumentError,
    FileEntry,
    VersionHash,
    check_chunk_sizes,
    chunk_documents,
    list_files,
    read_file,
    read_files,
    version_of,
)
from .errors import CDEError, StorageFullError
from .extraction import Limits
from .model import CDEModel, DTypeLike
from .splitting import split_spans

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

ProgressCallback = Callable[[str, int, int], None]
"""`progress(phase, done, total)`; phases are "load", "chunk", "context", "store", "remove"."""
PHASES = ("load", "chunk", "context", "store", "remove")
# Collection metadata recording how its files were chunked.
CHUNK_SIZE_KEY = "cde_rag_chunk_size"
CHUNK_OVERLAP_KEY = "cde_rag_chunk_overlap"
# Chroma's rule for the characters of a name (cde_rag.chroma limits the length).
_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]")


@dataclass(frozen=True)
class IndexReport:
    """What an indexing run did.

    `chunks` = `added` + `skipped`: chunks embedded and stored now, and chunks an earlier run
    had stored already. `errors` lists `(path, reason)` for files that could not be read.
    `removed` counts chunks deleted: old versions of changed files, and the chunks of the files
    in `pruned`. `gone` lists stored files missing from the folders indexed that were kept
    (the run did not prune).
    """

    collection: str
    files: int
    chunks: int
    added: int
    skipped: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    context: str = ""
    new_collection: bool = False
    removed: int = 0
    pruned: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def summary(self) -> str:
        how = "fitted on these chunks" if self.new_collection else "kept from the collection"
        removed = f", {self.removed} removed" if self.removed else ""
        pruned = f" (with {_plural(len(self.pruned), 'deleted file')})" if self.pruned else ""
        text = (
            f"Indexed {_plural(self.files, 'file')} into {self.collection!r}: "
            f"{_plural(self.chunks, 'chunk')}, {self.added} added, {self.skipped} already "
            f"stored{removed}{pruned}, {_plural(len(self.errors), 'file')} skipped; context "
            f"{self.context[:12]} ({how})."
        )
        if self.gone:
            more = f" and {len(self.gone) - 1} more" if len(self.gone) > 1 else ""
            text += (
                f" Gone from the folders given but still indexed: {self.gone[0]}{more}; pass "
                "--prune (prune=True) to remove their chunks."
            )
        return text


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
    prune: bool = False,
) -> IndexReport:
    """Load files and folders, then index them as `index_documents` does (see there), reading
    each file again when it is needed rather than holding them all. Unreadable files, and
    files over the caps (`max_bytes`, `max_pages`, `max_chars`: see `load_document`), are
    skipped and reported in `IndexReport.errors`; if no file at all can be read,
    `DocumentError`.

    Stored files that are gone from the folders given (their path there no longer exists) are
    listed in `IndexReport.gone`, or with `prune=True` removed (`IndexReport.pruned`). Only
    folders given are looked at: files given by name, and files that still exist but could not
    be read this time, keep their chunks."""
    check_collection_name(collection)
    check_chunk_sizes(chunk_size, chunk_overlap)
    skipped: list[tuple[str, str]] = []
    entries = list_files(paths, recursive, skipped)
    limits = Limits(max_bytes, max_pages, max_chars)
    report = _Reporter(progress, show_progress)
    readable: list[FileEntry] = []  # the entries read, by position in the stream

    def first() -> Iterator[Document]:
        progress = lambda done, total: report("load", done, total)  # noqa: E731
        for entry, doc in read_files(entries, limits, skipped, progress):
            readable.append(entry)
            yield doc

    def again(position: int) -> Document | None:
        entry = readable[position]
        try:
            return read_file(entry, limits)
        except DocumentError as exc:
            skipped.append((str(entry.path), f"{exc} (it changed while being indexed)"))
            return None

    def nothing() -> DocumentError:
        detail = "; ".join(f"{p}: {why}" for p, why in skipped[:3]) or "no files given"
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        return DocumentError(
            f"Nothing to index: no readable .txt/.md/.pdf/.html file among the paths given "
            f"({detail}{more})."
        )

    result = _index(
        _Stream(first(), again, nothing),
        client=client,
        collection=collection,
        model=model,
        chunking={CHUNK_SIZE_KEY: chunk_size, CHUNK_OVERLAP_KEY: chunk_overlap},
        seed=seed,
        batch_size=batch_size,
        embedding_cache=embedding_cache,
        device=device,
        dtype=dtype,
        show_progress=show_progress,
        report=report,
        prune=prune,
        gone=_gone_from(paths),
    )
    return replace(result, errors=list(skipped))


def _gone_from(paths: Iterable[str | os.PathLike[str]]) -> Callable[[str], bool]:
    """Whether a stored source names a file gone from the folders in `paths`.

    A walked file's source is `<folder name>/<path inside it>` (`load_documents`), so it is gone
    when no folder given under that name still has that path."""
    folders: dict[str, list[Path]] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            folders.setdefault(path.resolve().name or "root", []).append(path)

    def gone(source: str) -> bool:
        label, _, inside = source.partition("/")
        roots = folders.get(label)
        return bool(roots and inside) and not any(os.path.lexists(r / inside) for r in roots)

    return gone


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
    prune: bool = False,
    gone: Callable[[str], bool] | None = None,
) -> IndexReport:
    """Chunk documents, fit the context (new collection only), and sync each document's source.

    A source stored at the same content is left alone, a changed one gets its new chunks and
    then loses its old ones (see the module doc). Sources stored but not among `documents` are
    untouched unless `gone` or `prune` is given: those `gone(source)` accepts (all of them when
    `gone` is None) are removed with `prune=True`, else listed in `IndexReport.gone`.

    `model` defaults to cde-small-v2 for a new collection and to the collection's own model
    for an existing one (passing one there must name the same model). `embedding_cache` is a
    SQLite file that keeps computed vectors, so re-indexing the same chunks under the same
    context re-embeds nothing.
    """
    check_collection_name(collection)
    check_chunk_sizes(chunk_size, chunk_overlap)
    return _index(
        _Stream(
            documents,
            documents.__getitem__,
            lambda: DocumentError("Nothing to index: the documents have no text to chunk."),
        ),
        client=client,
        collection=collection,
        model=model,
        chunking={CHUNK_SIZE_KEY: chunk_size, CHUNK_OVERLAP_KEY: chunk_overlap},
        seed=seed,
        batch_size=batch_size,
        embedding_cache=embedding_cache,
        device=device,
        dtype=dtype,
        show_progress=show_progress,
        report=_Reporter(progress, show_progress),
        prune=prune,
        gone=gone,
    )


# Chunks held at once while storing. A source's chunks replace its old ones in one update, so
# a batch is whole sources: at most this many chunks, or one source's when it has more.
STREAM_CHUNKS = 1024
# Sources whose stored records are read at once when looking for unchanged ones.
_SOURCES_PER_READ = 100


@dataclass(frozen=True)
class _Stream:
    """The documents to index: `first` is iterated once (the survey), `again(position)` reads
    one again for later passes (None when it can no longer be read: the reader reports it), and
    `nothing()` is the error when there is no document at all."""

    first: Iterable[Document]
    again: Callable[[int], Document | None]
    nothing: Callable[[], DocumentError]


@dataclass
class _Survey:
    """What the first pass learns, without keeping any document: each source's documents
    (positions in the stream, in order) and version, and each document's chunk count."""

    sources: dict[str, list[int]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)


def _survey(documents: Iterable[Document], chunking: dict[str, int]) -> _Survey:
    survey = _Survey()
    hashes: dict[str, VersionHash] = {}
    size, overlap = chunking[CHUNK_SIZE_KEY], chunking[CHUNK_OVERLAP_KEY]
    for position, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(
                f"index_documents() takes Document objects, got {type(doc).__name__}; "
                "load files with load_document(s) first."
            )
        if doc.source not in hashes:
            hashes[doc.source] = VersionHash()
            hashes[doc.source].add(chunking)
        hashes[doc.source].add([doc.text, doc.metadata])
        survey.sources.setdefault(doc.source, []).append(position)
        survey.counts.append(sum(1 for _ in split_spans(doc.text, size, overlap)))
    survey.versions = {name: digest.hexdigest() for name, digest in hashes.items()}
    return survey


def _index(
    stream: _Stream,
    *,
    client: ClientAPI,
    collection: str,
    model: str | os.PathLike[str] | CDEModel | None,
    chunking: dict[str, int],
    seed: int,
    batch_size: int | None,
    embedding_cache: str | os.PathLike[str] | None,
    device: str | None,
    dtype: DTypeLike,
    show_progress: bool | None,
    report: _Reporter,
    prune: bool,
    gone: Callable[[str], bool] | None,
) -> IndexReport:
    from . import chroma
    from .chroma.sources import remove_records, stored_ids

    # Opened first, so an unusable cache path fails before any fitting.
    cache = EmbeddingCache(embedding_cache) if embedding_cache is not None else None
    try:
        survey = _survey(stream.first, chunking)
        report.close()
        if not survey.counts:
            raise stream.nothing()
        store = _open_existing(client, collection, chunking, model, device, dtype)
        stored = {} if store is None else _complete_sources(store, list(survey.versions))
        unchanged = {
            name: info.records
            for name, info in stored.items()
            if info.version == survey.versions[name]
        }
        report("chunk", 0, len(survey.counts))
        report("chunk", len(survey.counts), len(survey.counts))
        to_chunk = [
            position
            for name, positions in survey.sources.items()
            if name not in unchanged
            for position in positions
        ]
        chunks = sum(survey.counts[p] for p in to_chunk)
        if not chunks and not unchanged:
            raise DocumentError("Nothing to index: the documents have no text to chunk.")
        new = store is None
        if store is None:
            corpus = StreamedCorpus(
                chunks, lambda picks: _texts_at(stream, survey, chunking, picks)
            )
            store = _create(
                client,
                collection,
                corpus,
                chunking,
                model,
                seed,
                device,
                dtype,
                show_progress,
                report,
            )
        out_of_date = [] if new else _out_of_date(store, survey.sources, gone, prune)
        total = chunks + sum(unchanged.values())
        embedder = None if cache is None else CachedEmbedder(chroma.get_model(store), cache)
        done, added, stale = _store(
            stream, survey, unchanged, store, chunking, embedder, batch_size, report, total
        )
        if prune:
            stale += stored_ids(store, out_of_date)
        removed = remove_records(
            store, stale, progress=lambda done, todo: report("remove", done, todo)
        )
    except CDEError:
        raise
    except Exception as exc:
        full = _full_disk(exc, client, embedding_cache)
        if full is None:
            raise
        raise full from exc
    finally:
        report.close()
        if cache is not None:
            cache.close()
    return IndexReport(
        collection=collection,
        files=len(survey.counts),
        chunks=done,
        added=added,
        skipped=done - added,
        context=chroma.get_context(store).fingerprint,
        new_collection=new,
        removed=removed,
        pruned=out_of_date if prune else [],
        gone=[] if prune else out_of_date,
    )


def _texts_at(
    stream: _Stream, survey: _Survey, chunking: dict[str, int], picks: list[int]
) -> list[str]:
    """The texts of the chunks at `picks` (positions in the list of every chunk, in document
    order), reading only the documents that hold them."""
    counts = np.asarray(survey.counts)
    ends = np.cumsum(counts)
    holders = np.searchsorted(ends, picks, side="right").tolist()
    wanted: dict[int, list[int]] = {}
    for pick, holder in zip(picks, holders, strict=True):
        wanted.setdefault(holder, []).append(pick)
    texts: dict[int, str] = {}
    for position in sorted(wanted):
        doc = stream.again(position)
        spans = (
            []
            if doc is None
            else list(split_spans(doc.text, chunking[CHUNK_SIZE_KEY], chunking[CHUNK_OVERLAP_KEY]))
        )
        first = int(ends[position] - counts[position])
        for pick in wanted[position]:
            if pick - first >= len(spans):
                raise DocumentError(
                    "A file changed while the corpus context was being fitted, so the chunks "
                    "sampled for it are gone; run the same command again."
                )
            start, end = spans[pick - first]
            texts[pick] = doc.text[start:end]  # type: ignore[union-attr]
    return [texts[pick] for pick in picks]


def _store(
    stream: _Stream,
    survey: _Survey,
    unchanged: dict[str, int],
    store: Collection,
    chunking: dict[str, int],
    embedder: CachedEmbedder | None,
    batch_size: int | None,
    report: _Reporter,
    total: int,
) -> tuple[int, int, list[str]]:
    """Chunk, embed and write the changed sources a batch at a time (deleting nothing), in
    survey order. Returns the chunks passed (stored now or before), those added, and the stale
    ids to remove last."""
    from .chroma.sources import write_sources

    done = added = 0
    stale: list[str] = []
    last: tuple[int, int] | None = None
    batch: list[Any] = []
    held = 0

    def flush() -> None:
        nonlocal done, added, held, last

        def step(stored: int, todo: int) -> None:
            nonlocal last
            if todo:  # a batch with nothing to embed reports nothing: it is skipped at once
                last = (done + held - todo + stored, total)
                report("store", *last)

        result, old = write_sources(
            store,
            batch,
            embedder=embedder,
            batch_size=batch_size,
            show_progress=False,
            progress=step,
        )
        added += result.added
        stale.extend(old)
        done += held
        batch.clear()
        held = 0

    for source, positions in survey.sources.items():
        if source in unchanged:
            done += unchanged[source]
            continue
        docs = [stream.again(position) for position in positions]
        if any(doc is None for doc in docs):
            continue  # no longer readable (the reader reported it): its chunks are kept
        batch.append(_records(source, docs, chunking))  # type: ignore[arg-type]
        held += len(batch[-1].documents)
        if held >= STREAM_CHUNKS:
            flush()
    if batch:
        flush()
    if last != (done, done):
        report("store", done, done)
    return done, added, stale


def _by_source(documents: Sequence[Document]) -> dict[str, list[Document]]:
    """Documents grouped by source, in order (a source is what gets replaced as a whole)."""
    grouped: dict[str, list[Document]] = {}
    for doc in documents:
        if not isinstance(doc, Document):
            raise TypeError(
                f"index_documents() takes Document objects, got {type(doc).__name__}; "
                "load files with load_document(s) first."
            )
        grouped.setdefault(doc.source, []).append(doc)
    return grouped


def _version(docs: list[Document], chunking: dict[str, int]) -> str:
    """A source's version: its documents' texts and metadata, and how they are chunked."""
    return version_of([chunking, *([d.text, d.metadata] for d in docs)])


def versioned_chunks(
    documents: Sequence[Document], chunk_size: int, chunk_overlap: int
) -> list[Chunk]:
    """The documents' chunks with the metadata `cde-rag index` stores them with: each chunk
    names its source's version and how many chunks that version has. For pipelines that store
    chunks elsewhere first (the Ray engine), so a collection loaded from them later syncs as
    one indexed locally does."""
    chunking = {CHUNK_SIZE_KEY: chunk_size, CHUNK_OVERLAP_KEY: chunk_overlap}
    sources = _by_source(documents)
    chunks = chunk_documents(documents, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    counts: dict[str, int] = {}
    for chunk in chunks:
        counts[chunk.source] = counts.get(chunk.source, 0) + 1
    versions = {name: _version(docs, chunking) for name, docs in sources.items()}
    return [
        replace(
            chunk,
            metadata={
                **chunk.metadata,
                SOURCE_VERSION_KEY: versions[chunk.source],
                SOURCE_RECORDS_KEY: counts[chunk.source],
            },
        )
        for chunk in chunks
    ]


def _complete_sources(store: Collection, names: list[str]) -> dict[str, Any]:
    """Those of `names` stored as one complete version (`SourceInfo`), from chunk metadata,
    read a group of sources at a time so only one group's records are held."""
    from .chroma import list_sources
    from .chroma.records import in_batches

    found = {}
    for group in in_batches(names, _SOURCES_PER_READ):
        found.update((info.source, info) for info in list_sources(store, group) if info.complete)
    return found


def _out_of_date(
    store: Collection,
    sources: dict[str, list[int]],
    gone: Callable[[str], bool] | None,
    prune: bool,
) -> list[str]:
    """Stored sources not among this run's that `gone` accepts (all when None; none are looked
    for when there is neither `gone` nor `prune`)."""
    from .chroma.sources import source_names

    if gone is None and not prune:
        return []
    others = sorted(source_names(store) - sources.keys())
    return [name for name in others if gone is None or gone(name)]


def _records(source: str, docs: list[Document], chunking: dict[str, int]) -> Any:
    """A source's `SourceRecords`: its documents' chunks in order, labelled with its version."""
    from .chroma import SourceRecords

    chunks = chunk_documents(
        docs, chunk_size=chunking[CHUNK_SIZE_KEY], chunk_overlap=chunking[CHUNK_OVERLAP_KEY]
    )
    return SourceRecords(
        source,
        [c.text for c in chunks],
        ids=[c.id for c in chunks],
        metadatas=[c.metadata for c in chunks],
        version=_version(docs, chunking),
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


def _open_existing(
    client: ClientAPI,
    name: str,
    chunking: dict[str, int],
    model: str | os.PathLike[str] | CDEModel | None,
    device: str | None,
    dtype: DTypeLike,
) -> Collection | None:
    """The collection, opened with its model and context, or None if there is none yet."""
    from chromadb.errors import NotFoundError

    from . import chroma

    try:
        store = chroma.open_collection(client, name, model=model, device=device, dtype=dtype)
    except NotFoundError:
        return None
    check_chunking(store, chunking)
    return store


def _create(
    client: ClientAPI,
    name: str,
    corpus: StreamedCorpus,
    chunking: dict[str, int],
    model: str | os.PathLike[str] | CDEModel | None,
    seed: int,
    device: str | None,
    dtype: DTypeLike,
    show_progress: bool | None,
    report: _Reporter,
) -> Collection:
    """A new collection whose context is fitted on all chunks (`corpus`)."""
    from . import chroma

    report("context", 0, 1)
    store = chroma.create_collection(
        client,
        name,
        model=model if model is not None else chroma.DEFAULT_MODEL,
        corpus=corpus,
        seed=seed,
        device=device,
        dtype=dtype,
        metadata=chunking,
        get_or_create=True,  # another process may create it meanwhile: then use its context
        show_progress=show_progress,
    )
    report("context", 1, 1)
    check_chunking(store, chunking)
    return store


def check_chunking(store: Collection, chunking: dict[str, int]) -> None:
    """Refuse to chunk a collection's files a second way: both sets of chunks would be kept,
    so every passage would be stored (and retrieved) twice."""
    meta = store.metadata or {}
    recorded = {key: meta[key] for key in chunking if key in meta}
    if recorded and recorded != chunking:
        raise ValueError(
            f"Collection {store.name!r} was indexed with chunk size "
            f"{recorded.get(CHUNK_SIZE_KEY)} and overlap {recorded.get(CHUNK_OVERLAP_KEY)}; "
            f"this run uses {chunking[CHUNK_SIZE_KEY]} and {chunking[CHUNK_OVERLAP_KEY]}, "
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
    "remove": "Removing old chunks",
}
_UNITS = {"load": "file", "chunk": "doc", "context": "fit", "store": "chunk", "remove": "chunk"}


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
