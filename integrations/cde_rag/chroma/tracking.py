"""What a collection records about the fit of its context: the baseline and removals since.

`context_status` reports how far a collection has moved from the documents its context was
fitted on without scanning it, from two numbers in the collection's metadata:

- the baseline: how many records the fit stands for. It is the size of the corpus the context
  was fitted on when the collection is created (those are the documents it is created to hold),
  and the record count once a rebuild has re-embedded everything with a new context;
- the records removed since, counted after each delete that cde-rag makes.

Records added since follow from these and the exact live count (count - baseline + removed), so
adding needs no bookkeeping. Deletes made with Chroma's own `collection.delete` are not counted;
the drift score, which samples the records themselves, still sees what they changed.
"""

from __future__ import annotations

import threading
from typing import Any

from chromadb.api.models.Collection import Collection

from ..context import CorpusContext
from ._compat import collection_from, server_of

BASELINE_KEY = "cde_rag_fit_baseline"
REMOVED_KEY = "cde_rag_removed_since_fit"

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def fit_metadata(baseline: int) -> dict[str, int]:
    """The metadata of a collection whose context was just fitted on `baseline` records."""
    return {BASELINE_KEY: baseline, REMOVED_KEY: 0}


def baseline_of(context: CorpusContext) -> int:
    """The records a new context stands for: the corpus a fitted context was sampled from (the
    documents the collection is created to hold); none for a fallback or a given context."""
    return context.source_size or 0 if context.kind == "fitted" else 0


def current_metadata(collection: Collection) -> dict[str, Any]:
    """The collection's metadata as stored now (a `Collection` object keeps the copy it was
    opened with)."""
    server = server_of(collection)
    fresh = collection_from(server, collection.name, collection.tenant, collection.database)
    return dict(fresh.metadata or {})


def count_removed(collection: Collection, removed: int) -> None:
    """Add `removed` to the records removed since the fit (collections made before cde-rag
    tracked this are left as they are: their baseline is unknown)."""
    if removed <= 0:
        return
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault(str(collection.id), threading.Lock())
    with lock:  # Chroma replaces metadata whole: read, add, write, one thread at a time
        meta = current_metadata(collection)
        if BASELINE_KEY in meta:
            meta[REMOVED_KEY] = int(meta.get(REMOVED_KEY) or 0) + removed
            collection.modify(metadata=meta)
