"""The companion collection that stores a collection's corpus context, and the context cache.

A context's N rows go in order into a collection of their own (embeddings, minicorpus texts as
documents), the rest of the record into its metadata; the collection it serves is recorded as its
owner once created. Every read checks the rows against the fingerprint the collection was
embedded with (its recipe fingerprint and, when recorded, the checksum of its numbers), and each
context is read from Chroma once per process and then cached by checksum: two fits of one recipe
(another dtype or batch size) share a fingerprint, never their numbers.

Companions written before contexts had a checksum record the numbers' checksum as their
fingerprint and no checksum key; `CorpusContext.matches` accepts them.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from ..context import CorpusContext
from ..errors import ContextError, ContextMismatchError
from ._compat import collection_from, open_servers, server_of

CONTEXT_FORMAT = "cde-rag-chroma-context/1"

# Keys of the companion collection's metadata (Chroma metadata holds scalars only).
ROLE_KEY = "cde_rag_role"
ROLE_CONTEXT = "context"
# The id of the collection whose vectors the stored context made.
OWNER_KEY = "cde_rag_owner"
FINGERPRINT_KEY = "cde_rag_fingerprint"
CHECKSUM_KEY = "cde_rag_checksum"

_REMEDY = (
    "Vectors in the collection can only be queried with the context they were embedded "
    "with: rebuild the collection with a new context (cde_rag.chroma.rebuild_collection), "
    "which re-embeds its documents."
)

_CONTEXTS: dict[str, CorpusContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def context_collection_name(name: str, fingerprint: str) -> str:
    """Where the context of collection `name` lives: one companion per collection and context."""
    return f"{name}-cde-context-{fingerprint[:16]}"


def get_raw(client: ClientAPI, name: str) -> Collection | None:
    """Collection `name` without an embedding function (nothing is loaded), or None."""
    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None


def remember(context: CorpusContext) -> CorpusContext:
    """Cache a checked context by checksum (its exact numbers); the copy cached first wins."""
    with _CONTEXTS_LOCK:
        return _CONTEXTS.setdefault(context.checksum, context)


def _cached(fingerprint: str, checksum: str | None) -> CorpusContext | None:
    """The cached context a record names. A record without a checksum is looked up by its
    fingerprint, which for records of the previous format is the checksum."""
    with _CONTEXTS_LOCK:
        found = _CONTEXTS.get(checksum or fingerprint)
    return found if found is not None and found.matches(fingerprint, checksum) else None


def _context_metadata(context: CorpusContext) -> dict[str, Any]:
    meta: dict[str, Any] = {
        ROLE_KEY: ROLE_CONTEXT,
        "cde_rag_format": CONTEXT_FORMAT,
        FINGERPRINT_KEY: context.fingerprint,
        CHECKSUM_KEY: context.checksum,
        "cde_rag_model_name": context.model_name,
        "cde_rag_model_fingerprint": context.model_fingerprint,
        "cde_rag_model_revision": context.model_revision,
        "cde_rag_backbone_revision": context.backbone_revision,
        "cde_rag_fit_dtype": context.fit_dtype,
        "cde_rag_kind": context.kind,
        "cde_rag_size": context.size,
        "cde_rag_dim": context.dim,
        "cde_rag_has_minicorpus": context.minicorpus is not None,
        "cde_rag_created_at": context.created_at,
        "cde_rag_seed": context.seed,
        "cde_rag_source_size": context.source_size,
    }
    return {k: v for k, v in meta.items() if v is not None}


def _row_ids(size: int) -> list[str]:
    return [f"{i:06d}" for i in range(size)]


def write_context(client: ClientAPI, base: str, context: CorpusContext) -> str:
    """Store the context's rows in a companion collection; return its name.

    A complete copy left by an interrupted run is reused and a torn one replaced; a name taken
    by the context of a live collection (one renamed away, say) is skipped.
    """
    for attempt in range(1, 100):
        name = base if attempt == 1 else f"{base}-{attempt}"
        existing = get_raw(client, name)
        if existing is not None:
            owner = owner_of(existing)
            if owner and _alive(client, owner):
                continue
            try:
                read_context(existing, context.fingerprint, context.checksum)
                return name
            except ContextError:
                client.delete_collection(name)  # torn by a crash; no collection uses it
        store = client.create_collection(
            name, embedding_function=None, metadata=_context_metadata(context)
        )
        ids = _row_ids(context.size)
        step = client.get_max_batch_size()
        for start in range(0, context.size, step):
            end = start + step
            store.add(
                ids=ids[start:end],
                embeddings=context.embeddings[start:end],
                documents=list(context.minicorpus[start:end]) if context.minicorpus else None,
            )
        return name
    raise ContextError(f"No free name for the context collection of {base!r}.")


def _alive(client: ClientAPI, collection_id: str) -> bool:
    try:
        client.get_collection_by_id(UUID(collection_id), embedding_function=None)
    except (NotFoundError, ValueError):
        return False
    return True


def claim(store: Collection, owner: Collection) -> None:
    """Record which collection's vectors depend on this context (Chroma replaces metadata whole)."""
    store.modify(metadata={**(store.metadata or {}), OWNER_KEY: str(owner.id)})


def owner_of(store: Collection) -> str | None:
    """The id of the collection whose vectors this context made (None until creation ends)."""
    owner = (store.metadata or {}).get(OWNER_KEY)
    return str(owner) if owner else None


def read_context(store: Collection, fingerprint: str, checksum: str | None = None) -> CorpusContext:
    """The context in companion collection `store`, refused unless it is the one a collection
    records: `fingerprint`, and `checksum` when recorded (by the collection or the companion)."""
    meta = store.metadata or {}
    if meta.get(ROLE_KEY) != ROLE_CONTEXT or meta.get("cde_rag_format") != CONTEXT_FORMAT:
        raise ContextError(
            f"Chroma collection {store.name!r} is not a cde-rag context store (its metadata lacks "
            f"the cde-rag context record). {_REMEDY}"
        )
    stored_checksum = meta.get(CHECKSUM_KEY)
    other_numbers = checksum is not None and stored_checksum not in (None, checksum)
    if meta.get(FINGERPRINT_KEY) != fingerprint or other_numbers:
        raise ContextError(
            f"Context collection {store.name!r} holds context "
            f"{str(meta.get(FINGERPRINT_KEY))[:12]}, but the collection was embedded with "
            f"{fingerprint[:12]}: it was altered or replaced. {_REMEDY}"
        )
    checksum = checksum or (str(stored_checksum) if stored_checksum else None)
    cached = _cached(fingerprint, checksum)
    size = int(meta.get("cde_rag_size", 0))
    count = store.count()
    if count != size:
        raise ContextError(
            f"Context collection {store.name!r} holds {count} of the context's {size} rows: it "
            f"was altered or only partly written. {_REMEDY}"
        )
    if cached is not None:
        return cached
    got = store.get(include=["embeddings", "documents"])  # type: ignore[list-item]
    order = np.argsort(got["ids"])
    ids = [got["ids"][i] for i in order]
    if ids != _row_ids(size):
        raise ContextError(f"Context collection {store.name!r} has unexpected row ids. {_REMEDY}")
    embeddings = np.asarray(got["embeddings"], dtype=np.float32)[order]
    minicorpus = None
    if meta.get("cde_rag_has_minicorpus"):
        documents = got["documents"] or []
        minicorpus = tuple(documents[i] or "" for i in order)
    try:
        context = CorpusContext(
            embeddings=embeddings,
            model_name=str(meta["cde_rag_model_name"]),
            model_fingerprint=str(meta["cde_rag_model_fingerprint"]),
            kind=meta["cde_rag_kind"],  # type: ignore[arg-type]
            minicorpus=minicorpus,
            seed=meta.get("cde_rag_seed"),  # type: ignore[arg-type]
            source_size=meta.get("cde_rag_source_size"),  # type: ignore[arg-type]
            created_at=str(meta["cde_rag_created_at"]),
            model_revision=meta.get("cde_rag_model_revision"),  # type: ignore[arg-type]
            backbone_revision=meta.get("cde_rag_backbone_revision"),  # type: ignore[arg-type]
            fit_dtype=meta.get("cde_rag_fit_dtype"),  # type: ignore[arg-type]
        )
    except (KeyError, ValueError) as exc:
        raise ContextError(
            f"Context collection {store.name!r} is malformed ({exc}). {_REMEDY}"
        ) from exc
    if not context.matches(fingerprint, checksum):
        raise ContextError(
            f"Context collection {store.name!r} was altered: its rows no longer match the "
            f"context {fingerprint[:12]} the collection was embedded with. {_REMEDY}"
        )
    return remember(context)


def load_context(
    owner: Collection, store_name: str, fingerprint: str, checksum: str | None = None
) -> CorpusContext:
    """The context of collection `owner`, stored in `store_name`: checked, and claimed if new."""
    try:
        store = collection_from(server_of(owner), store_name, owner.tenant, owner.database)
    except NotFoundError:
        raise ContextError(
            f"The corpus context of collection {owner.name!r} is missing: its context collection "
            f"{store_name!r} was deleted. Its vectors cannot be queried consistently any more; "
            "re-embed them with a new context: cde_rag.chroma.rebuild_collection(client, "
            f"{owner.name!r}) (fits on the stored documents, or pass corpus=/context=)."
        ) from None
    claimed = owner_of(store)
    if claimed and claimed != str(owner.id):
        raise ContextMismatchError(
            f"Collection {owner.name!r} names context collection {store_name!r}, which belongs "
            "to another collection: its embedding function configuration was replaced (e.g. by "
            "collection.modify(configuration=...)), and its vectors were not embedded with that "
            "context. Re-embed with cde_rag.chroma.rebuild_collection(client, "
            f"{owner.name!r}, corpus=...)."
        )
    context = read_context(store, fingerprint, checksum)
    if not claimed:
        claim(store, owner)  # creation was interrupted right after creating the collection
    return context


def find_context(
    fingerprint: str, checksum: str | None, store_name: str, tenant: str, database: str
) -> CorpusContext:
    """Find a context for an embedding function Chroma rebuilt from config (it has no client).

    `client.get_collection(name)` hands Chroma's rebuilt function nothing but its config, so look
    through the Chroma connections this process has opened; the fingerprint and checksum checks
    make any copy found as good as any other.
    """
    cached = _cached(fingerprint, checksum)
    if cached is not None:
        return cached
    for server in open_servers():
        try:
            store = collection_from(server, store_name, tenant, database)
        except Exception:  # not in this connection (or it is down): try the next one
            continue
        return read_context(store, fingerprint, checksum)
    raise ContextError(
        f"The corpus context {fingerprint[:12]} (Chroma collection {store_name!r}) was not found "
        "through any Chroma client of this process. Open the collection with "
        "cde_rag.chroma.open_collection(client, name), which loads and checks its context."
    )
