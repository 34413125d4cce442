"""Keep a collection in step with its sources: replace a changed source, delete a gone one.

A source (a file name, a URL, any string) owns the records whose metadata `source` names it.
Each of its records also carries the source's version (a hash of its content) and how many
records that version has, so an unchanged source is recognised from stored metadata alone, and a
source left half old, half new by a crash is recognised as unfinished.

Updating writes first and deletes last: records the collection lacks are embedded and stored,
records kept from the old version are relabelled with the new version, and only then are the old
version's other records deleted. A crash at any point leaves old and new records side by side,
never neither; the same update run again finishes it, embedding nothing twice, and leaves exactly
what an uninterrupted run leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection

from ..documents import SOURCE_RECORDS_KEY, SOURCE_VERSION_KEY, chunk_id, version_of
from ..errors import InputError
from ..model import check_texts
from ._compat import server_of
from .records import (
    Embedder,
    ProgressCallback,
    check_records,
    embedding,
    in_batches,
    store_missing,
)
from .tracking import count_removed

SOURCE_KEY = "source"
VERSION_KEY = SOURCE_VERSION_KEY
RECORDS_KEY = SOURCE_RECORDS_KEY
# Sources asked for in one `$in` filter.
_SOURCES_PER_QUERY = 100


@dataclass(frozen=True)
class SourceInfo:
    """A source as stored: its record count, and its version when the records are exactly one
    complete version (None for a source an update left unfinished, or stored without versions
    by `add_documents` or an older cde-rag)."""

    source: str
    records: int
    version: str | None

    @property
    def complete(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class SourceRecords:
    """The records a source should consist of (see `update_sources`)."""

    source: str
    documents: Sequence[str]
    ids: Sequence[str] | None = None
    metadatas: Sequence[dict[str, Any] | None] | None = None
    version: str | None = None


@dataclass(frozen=True)
class SyncResult:
    """What an update did: records embedded and stored, records already stored (kept, maybe
    relabelled), and records deleted (old versions and deleted sources)."""

    added: int = 0
    kept: int = 0
    removed: int = 0
    unchanged_sources: list[str] = field(default_factory=list)


def list_sources(collection: Collection, sources: Iterable[str] | None = None) -> list[SourceInfo]:
    """The sources stored in the collection (or those of `sources` that are), by name.

    Reads the metadata of every record of those sources in pages (no vectors, no model)."""
    return [_info(name, records) for name, records in sorted(_stored(collection, sources).items())]


def update_source(
    collection: Collection,
    source: str,
    documents: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    metadatas: Sequence[dict[str, Any] | None] | None = None,
    version: str | None = None,
    embedder: Embedder | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> SyncResult:
    """Make `documents` the records of `source`: store what is new, delete what is gone.

    Ids default to `cde_rag.documents.chunk_id(source, position, text)`, as `cde-rag index` makes
    them, so unchanged pieces keep their ids and are not embedded again. `version` names this
    content (default: a hash of ids, texts and metadata): a source already stored completely at
    that version is left as it is without looking further. Each record's metadata gets `source`,
    the version and the record count. Crash-safe: see the module doc. `progress(done, total)`
    follows the embedding, as in `add_documents`.
    """
    return update_sources(
        collection,
        [SourceRecords(source, documents, ids, metadatas, version)],
        embedder=embedder,
        batch_size=batch_size,
        show_progress=show_progress,
        progress=progress,
    )


def delete_source(
    collection: Collection, source: str, *, progress: ProgressCallback | None = None
) -> int:
    """Delete every record of `source`; returns how many there were (0 for an unknown one)."""
    return update_sources(collection, [], delete=[source], removing=progress).removed


def update_sources(
    collection: Collection,
    updates: Sequence[SourceRecords],
    *,
    delete: Iterable[str] = (),
    embedder: Embedder | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
    removing: ProgressCallback | None = None,
) -> SyncResult:
    """`update_source` for many sources at once (their new records are embedded in shared
    batches), and `delete_source` for those in `delete`. `progress(done, total)` follows the
    embedding, `removing(done, total)` the deletes, which come last (only when there are some).
    """
    gone = sorted(set(delete))
    result, stale = write_sources(
        collection,
        updates,
        also_named=gone,
        embedder=embedder,
        batch_size=batch_size,
        show_progress=show_progress,
        progress=progress,
    )
    stale += stored_ids(collection, gone)
    return replace(result, removed=remove_records(collection, stale, progress=removing))


def write_sources(
    collection: Collection,
    updates: Sequence[SourceRecords],
    *,
    also_named: Sequence[str] = (),
    embedder: Embedder | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[SyncResult, list[str]]:
    """The writing half of `update_sources`: store and relabel, delete nothing. Returns what
    it did and the stale ids (old versions' records) to hand to `remove_records` last, so a
    caller updating sources a batch at a time still deletes only after every write.
    `also_named` are sources the caller deletes in the same update (refused here as well)."""
    plans = [_checked(update, batch_size) for update in updates]
    named = [plan.source for plan in plans]
    if len(set(named)) != len(named) or set(named) & set(also_named):
        raise InputError("Each source may be updated or deleted once per call.")
    stored = _stored(collection, named)

    unchanged: list[str] = []
    kept = 0
    todo: list[_Plan] = []
    for plan in plans:
        records = stored.get(plan.source, {})
        if _info(plan.source, records).version == plan.version:
            unchanged.append(plan.source)
            kept += len(records)
        else:
            plan.stored = records
            todo.append(plan)
    _refuse_foreign_ids(collection, todo)

    texts, ids, metas = [], [], []
    for plan in todo:
        for position in plan.missing():
            texts.append(plan.texts[position])
            ids.append(plan.ids[position])
            metas.append(plan.metadatas[position])
    added = store_missing(
        collection,
        texts,
        ids,
        # Only adding needs the model and the context check: deleting and relabelling do not.
        embedding(collection, texts, embedder) if texts else _no_vectors,
        metadatas=metas,
        batch_size=batch_size,
        show_progress=show_progress,
        progress=progress,
    ).added
    page = server_of(collection).get_max_batch_size()
    relabel = [item for plan in todo for item in plan.relabelled()]
    for batch in in_batches(relabel, page):
        collection.update(ids=[i for i, _ in batch], metadatas=[m for _, m in batch])
    kept += sum(len(set(plan.ids)) for plan in todo) - added
    stale = [i for plan in todo for i in plan.stale()]
    return SyncResult(added=added, kept=kept, unchanged_sources=unchanged), stale


def remove_records(
    collection: Collection, ids: Sequence[str], *, progress: ProgressCallback | None = None
) -> int:
    """Delete `ids` in pages, counting them as removed since the fit; `progress(done, total)`
    after each page (not called when there is nothing to delete). Returns how many."""
    page = server_of(collection).get_max_batch_size()
    if progress is not None and ids:
        progress(0, len(ids))
    for done, batch in enumerate(in_batches(ids, page), 1):
        collection.delete(ids=list(batch))
        count_removed(collection, len(batch))
        if progress is not None:
            progress(min(done * page, len(ids)), len(ids))
    return len(ids)


def stored_ids(collection: Collection, sources: Iterable[str]) -> list[str]:
    """The ids of every record of `sources`."""
    return [i for records in _stored(collection, sources).values() for i in records]


def source_names(collection: Collection) -> set[str]:
    """The names of every source stored, read in pages of metadata: memory grows with the
    number of sources, not of records."""
    names: set[str] = set()
    for _, metadatas in _pages(collection, None):
        names.update(m[SOURCE_KEY] for m in metadatas if isinstance((m or {}).get(SOURCE_KEY), str))
    return names


# -- what is stored ---------------------------------------------------------------------------

# A stored record: its (version, record count) label and the keys of its metadata.
_Stored = tuple[tuple[Any, Any], tuple[str, ...]]


def _stored(collection: Collection, sources: Iterable[str] | None) -> dict[str, dict[str, _Stored]]:
    """The stored records of `sources` (all sources when None), by source and id."""
    names = None if sources is None else sorted(set(sources))
    if names is not None and not names:
        return {}
    groups: list[Any] = [None] if names is None else list(in_batches(names, _SOURCES_PER_QUERY))
    found: dict[str, dict[str, _Stored]] = {}
    # One copy of each label and key tuple, however many records share it.
    labels: dict[tuple[Any, Any], tuple[Any, Any]] = {}
    key_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
    for group in groups:
        where = None if group is None else {SOURCE_KEY: {"$in": list(group)}}
        for page_ids, metadatas in _pages(collection, where):
            for record_id, meta in zip(page_ids, metadatas, strict=True):
                source = (meta or {}).get(SOURCE_KEY)
                if not isinstance(source, str):
                    continue
                label = (meta.get(VERSION_KEY), meta.get(RECORDS_KEY))
                keys = tuple(sorted(meta))
                found.setdefault(source, {})[record_id] = (
                    labels.setdefault(label, label),
                    key_sets.setdefault(keys, keys),
                )
    return found


def _pages(collection: Collection, where: dict[str, Any] | None) -> Iterator[tuple[list, list]]:
    """(ids, metadatas) of the records `where` selects, a page at a time."""
    page = server_of(collection).get_max_batch_size()
    offset = 0
    while True:
        got = collection.get(where=where, include=["metadatas"], limit=page, offset=offset)  # type: ignore[list-item]
        if not got["ids"]:
            return
        offset += len(got["ids"])
        yield got["ids"], got["metadatas"] or [None] * len(got["ids"])


def _info(source: str, records: dict[str, _Stored]) -> SourceInfo:
    labels = {label for label, _ in records.values()}
    version, count = next(iter(labels)) if len(labels) == 1 else (None, None)
    complete = isinstance(version, str) and count == len(records)
    return SourceInfo(source, len(records), version if complete else None)


# -- one source's update ----------------------------------------------------------------------


class _Plan:
    """A source's new records (checked, labelled) and, once read, its stored ones."""

    def __init__(self, update: SourceRecords, batch_size: int | None):
        if not isinstance(update.source, str) or not update.source:
            raise InputError(f"A source must be a non-empty string, got {update.source!r}.")
        self.source = update.source
        self.texts = check_texts(update.documents, f"documents of {update.source!r}")
        given_ids = update.ids
        if given_ids is None:
            given_ids = [chunk_id(self.source, i, text) for i, text in enumerate(self.texts)]
        self.ids = check_records(self.texts, given_ids, update.metadatas, batch_size)
        given = update.metadatas or [None] * len(self.texts)
        records = len(dict.fromkeys(self.ids))
        self.version = update.version or version_of(
            zip(self.ids, self.texts, (m or {} for m in given), strict=True)
        )
        label = {SOURCE_KEY: self.source, VERSION_KEY: self.version, RECORDS_KEY: records}
        self.metadatas = [{**(meta or {}), **label} for meta in given]
        self.stored: dict[str, _Stored] = {}

    def missing(self) -> Iterator[int]:
        """Positions of the records this source does not hold yet."""
        return (i for i, record_id in enumerate(self.ids) if record_id not in self.stored)

    def relabelled(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, metadata) for records kept from another version: the new metadata, with the
        keys the new one lacks removed (Chroma's update merges; None deletes a key)."""
        seen: set[str] = set()
        for record_id, meta in zip(self.ids, self.metadatas, strict=True):
            old = self.stored.get(record_id)
            if old is None or record_id in seen or old[0] == (self.version, meta[RECORDS_KEY]):
                continue
            seen.add(record_id)
            yield record_id, {**dict.fromkeys(old[1]), **meta}

    def stale(self) -> list[str]:
        """Stored ids this source no longer has."""
        keep = set(self.ids)
        return [record_id for record_id in self.stored if record_id not in keep]


def _checked(update: SourceRecords, batch_size: int | None) -> _Plan:
    if not isinstance(update, SourceRecords):
        raise InputError(f"update_sources takes SourceRecords, got {type(update).__name__}.")
    return _Plan(update, batch_size)


def _refuse_foreign_ids(collection: Collection, plans: list[_Plan]) -> None:
    """Refuse, before anything is written, ids another source (or no source) already holds:
    keeping them would leave that record's text under this source's name."""
    page = server_of(collection).get_max_batch_size()
    owner: dict[str, str] = {}
    for plan in plans:
        for i in plan.missing():
            first = owner.setdefault(plan.ids[i], plan.source)
            if first != plan.source:
                raise InputError(
                    f"Id {plan.ids[i]!r} is given for sources {first!r} and {plan.source!r}; "
                    "ids must be unique across sources (leave ids=None to make them so)."
                )
    for batch in in_batches(list(owner), page):
        got = collection.get(ids=list(batch), include=["metadatas"])  # type: ignore[list-item]
        for record_id, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            holder = (meta or {}).get(SOURCE_KEY)
            held_by = f"source {holder!r}" if holder is not None else "a record with no source"
            raise InputError(
                f"Id {record_id!r} of source {owner[record_id]!r} is already stored for "
                f"{held_by}. Ids must be unique across sources: leave ids=None (they are made "
                "from the source, position and text), or delete that record first."
            )


def _no_vectors(positions: list[int]) -> np.ndarray:
    """The vectors of an empty list of records (store_missing asks only for records it adds)."""
    return np.zeros((len(positions), 0), dtype=np.float32)
