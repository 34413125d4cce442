"""Create, open and delete cde-rag collections, and read what one records (config, context, model).

A collection is created only after its companion context collection is complete, so a crash
leaves no collection or a complete one; opening checks the stored context against the
fingerprint and checksum in the collection's embedding-function config, and the model against its
fingerprint. The collection's metadata records where the model came from (its hub commit and its
backbone's), and a model from the hub is reopened at the recorded commit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from .._adapters import DEFAULT_MODEL
from ..context import DEFAULT_SEED, CorpusContext, StreamedCorpus
from ..errors import CDEError, CheckpointError, ContextError, ContextMismatchError
from ..model import CDEModel, DTypeLike, shared_model
from ._compat import embedding_function_of, scope_of
from .context_store import (
    claim,
    context_collection_name,
    get_raw,
    load_context,
    owner_of,
    remember,
    write_context,
)
from .embedding_function import EF_NAME, SPACE, CDEEmbeddingFunction
from .tracking import baseline_of, fit_metadata

# Chroma allows 512 characters; the context collection's name adds up to 32 to the collection's.
MAX_NAME_LENGTH = 480
# The staging collection a rebuild of collection `name` fills is `name + REBUILD_SUFFIX`.
REBUILD_SUFFIX = "-cde-rebuild"

ModelSource = str | os.PathLike[str] | CDEModel


class CollectionExistsError(CDEError, ValueError):
    """`create_collection` was asked to create a collection that already exists."""


def provenance_metadata(model: CDEModel) -> dict[str, str]:
    """Where the model came from, as collection metadata (Chroma metadata holds no None)."""
    provenance = model.provenance
    recorded = {
        "cde_rag_model_revision": provenance["revision"],
        "cde_rag_backbone": provenance["backbone"],
        "cde_rag_backbone_revision": provenance["backbone_revision"],
    }
    return {key: value for key, value in recorded.items() if value is not None}


# -- what a collection records ---------------------------------------------------------------


def cde_config(collection: Collection) -> dict[str, Any]:
    """The collection's cde-rag embedding-function config, refused if it has none."""
    ef = (collection.configuration_json or {}).get("embedding_function") or {}
    if ef.get("name") != EF_NAME or not isinstance(ef.get("config"), dict):
        raise ContextError(
            f"Chroma collection {collection.name!r} was not created by cde-rag (its embedding "
            f"function is {ef.get('name') or 'unset'!r}), so it has no stored corpus context. "
            "Create one with cde_rag.chroma.create_collection(client, name, corpus=...)."
        )
    config = ef["config"]
    CDEEmbeddingFunction.validate_config(config)
    return config


def get_context(collection: Collection) -> CorpusContext:
    """The corpus context stored with a cde-rag collection, checked against its fingerprint.

    Use it to build LangChain / LlamaIndex embeddings that agree with the stored vectors.
    """
    config = cde_config(collection)
    store = config.get("context_collection")
    if not store:
        raise ContextError(
            f"Collection {collection.name!r} does not record where its context is stored: its "
            "embedding function configuration was replaced (e.g. by collection.modify("
            "configuration=...)). Re-embed with cde_rag.chroma.rebuild_collection(client, "
            f"{collection.name!r}, corpus=...)."
        )
    return load_context(
        collection, store, config["context_fingerprint"], config.get("context_checksum")
    )


def get_model(collection: Collection) -> CDEModel:
    """The (shared) model a cde-rag collection was embedded with."""
    ef = embedding_function_of(collection)
    if isinstance(ef, CDEEmbeddingFunction):
        return ef.model
    config = cde_config(collection)
    model = shared_model(config["model"], revision=config.get("revision"))
    if config.get("model_fingerprint") is not None and not model.matches_fingerprint(
        config["model_fingerprint"]
    ):
        raise ContextMismatchError(
            f"The checkpoint at {config['model']!r} is not the model collection "
            f"{collection.name!r} was embedded with (fingerprint {model.fingerprint[:12]}, "
            f"expected {str(config['model_fingerprint'])[:12]}). Open it with "
            "cde_rag.chroma.open_collection(client, name, model=<the original checkpoint>)."
        )
    return model


def bound_function(collection: Collection) -> CDEEmbeddingFunction:
    """The collection's embedding function, refused unless it uses the stored context."""
    context = get_context(collection)
    ef = embedding_function_of(collection)
    if isinstance(ef, CDEEmbeddingFunction):
        if not context.matches(ef.context_fingerprint, ef.context_checksum):
            raise ContextMismatchError(
                f"Refusing to add to {collection.name!r} with context "
                f"{ef.context_fingerprint[:12]}: its vectors were embedded with the stored context "
                f"{context.fingerprint[:12]}. Open it with cde_rag.chroma.open_collection(client, "
                f"{collection.name!r}) instead of passing another embedding function, or move "
                "it to the new context with rebuild_collection (re-embeds)."
            )
        return ef  # its context is the one just read, cached by checksum
    return _function_for(cde_config(collection), context, model=None)


def _function_for(
    config: dict[str, Any],
    context: CorpusContext,
    model: ModelSource | None,
    device: str | None = None,
    dtype: DTypeLike = None,
) -> CDEEmbeddingFunction:
    ef = CDEEmbeddingFunction(
        model if model is not None else config["model"],
        context=context,
        context_fingerprint=config["context_fingerprint"],
        context_checksum=config.get("context_checksum"),
        context_collection=config["context_collection"],
        tenant=config.get("tenant"),
        database=config.get("database"),
        revision=config.get("revision"),
        device=device,
        dtype=dtype,
    )
    try:
        loaded = ef.model
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc} (The collection was embedded with model {config['model']!r}; if its weights "
            "are elsewhere on this machine, pass model= to open_collection.)"
        ) from exc
    loaded.check_context(context)  # refuse another model now, not at the first query
    return ef


# -- creating, opening, deleting -------------------------------------------------------------


def create_collection(
    client: ClientAPI,
    name: str,
    *,
    model: ModelSource = DEFAULT_MODEL,
    corpus: Sequence[str] | StreamedCorpus | None = None,
    context: CorpusContext | None = None,
    seed: int = DEFAULT_SEED,
    revision: str | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
    metadata: dict[str, Any] | None = None,
    get_or_create: bool = False,
    show_progress: bool | None = None,
) -> Collection:
    """Create collection `name` whose vectors use a context fitted on `corpus` (or `context`).

    The context is stored in Chroma first, the collection last, so a crash leaves either no
    collection or a complete one (rerun to finish). With `get_or_create=True` an existing
    collection is opened with its stored context and `corpus` is not fitted.
    """
    if (corpus is None) == (context is None):
        raise ContextError(
            "create_collection needs exactly one of corpus= (documents to fit the context on; "
            "pass the documents you will index) or context= (a CorpusContext)."
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"Collection name is {len(name)} characters long; cde-rag collections may have at "
            f"most {MAX_NAME_LENGTH} (the context collection's name adds to it). Use a shorter one."
        )
    with name_lock(name):
        existing = get_raw(client, name)
        if existing is not None:
            return _existing(client, existing, model, context, get_or_create, device, dtype)
        loaded = (
            shared_model(model, revision=revision, device=device, dtype=dtype)
            if not isinstance(model, CDEModel)
            else model
        )
        if context is None:
            context = loaded.fit_context(corpus, seed=seed, show_progress=show_progress)  # type: ignore[arg-type]
        return create(client, name, loaded, context, metadata, get_or_create, device, dtype)


_NAME_LOCKS: dict[str, threading.RLock] = {}
_NAME_LOCKS_LOCK = threading.Lock()


def name_lock(name: str) -> threading.RLock:
    """Threads of one process create or rebuild a given collection one at a time."""
    with _NAME_LOCKS_LOCK:
        return _NAME_LOCKS.setdefault(name, threading.RLock())


def create(
    client: ClientAPI,
    name: str,
    model: CDEModel,
    context: CorpusContext,
    metadata: dict[str, Any] | None,
    get_or_create: bool,
    device: str | None,
    dtype: DTypeLike,
    store: str | None = None,
) -> Collection:
    """Store `context` (in `store`, by default the collection's own companion), then create
    collection `name` bound to it, and record it as the context's owner.

    The collection records the model's hub commit (reopened at that commit) and its metadata
    the model's provenance and the fit's baseline (`tracking`)."""
    model.check_context(context)
    store = write_context(
        client, store or context_collection_name(name, context.fingerprint), context
    )
    remember(context)
    tenant, database = scope_of(client)
    ef = CDEEmbeddingFunction(
        model,
        context=context,
        context_collection=store,
        tenant=tenant,
        database=database,
        revision=model.revision,  # the commit, never a branch that may move
        device=device,
        dtype=dtype,
    )
    recorded = {**(metadata or {}), **provenance_metadata(model)}
    recorded.update(fit_metadata(baseline_of(context)))
    try:
        created = client.create_collection(
            name,
            embedding_function=ef,  # type: ignore[arg-type]
            metadata=recorded,
            configuration={"hnsw": {"space": SPACE}},
        )
    except Exception:
        # Another process may have created it meanwhile: then treat it as existing.
        existing = get_raw(client, name)
        if existing is None:
            raise
        return _existing(client, existing, model, context, get_or_create, device, dtype)
    claim(client.get_collection(store, embedding_function=None), created)
    return created


def _existing(
    client: ClientAPI,
    existing: Collection,
    model: ModelSource,
    context: CorpusContext | None,
    get_or_create: bool,
    device: str | None,
    dtype: DTypeLike,
) -> Collection:
    stored = get_context(existing)
    if context is not None and not np.array_equal(context.embeddings, stored.embeddings):
        raise ContextMismatchError(
            f"Collection {existing.name!r} already exists with context "
            f"{stored.fingerprint[:12]}; refusing to change it to {context.fingerprint[:12]} "
            "because its stored vectors would mix two contexts. Re-embed instead: "
            f"cde_rag.chroma.rebuild_collection(client, {existing.name!r}, context=...), or use "
            "another collection name."
        )
    if not get_or_create:
        raise CollectionExistsError(
            f"Collection {existing.name!r} already exists. Open it with "
            f"cde_rag.chroma.open_collection(client, {existing.name!r}) (or pass "
            "get_or_create=True); to change its context, use rebuild_collection."
        )
    return open_collection(client, existing.name, model=model, device=device, dtype=dtype)


def open_collection(
    client: ClientAPI,
    name: str,
    *,
    model: ModelSource | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
) -> Collection:
    """Open a cde-rag collection with the model and context it was embedded with.

    `model` overrides where the weights are loaded from (e.g. the checkpoint sits elsewhere on
    this machine); it must be the same model, or the context is refused.
    """
    raw = get_raw(client, name)
    if raw is None:
        staging = get_raw(client, name + REBUILD_SUFFIX)
        hint = (
            f" A rebuild of it was interrupted: run cde_rag.chroma.rebuild_collection(client, "
            f"{name!r}) again to finish it."
            if staging is not None
            else " Create it with cde_rag.chroma.create_collection(client, name, corpus=...)."
        )
        raise NotFoundError(f"Collection {name!r} does not exist.{hint}")
    context = get_context(raw)
    ef = _function_for(cde_config(raw), context, model, device, dtype)
    return client.get_collection(name, embedding_function=ef)  # type: ignore[arg-type]


def delete_collection(client: ClientAPI, name: str) -> None:
    """Delete a cde-rag collection and its context collection."""
    raw = get_raw(client, name)
    if raw is None:
        raise NotFoundError(f"Collection {name!r} does not exist.")
    store_name = cde_config(raw).get("context_collection")
    client.delete_collection(raw.name)
    store = get_raw(client, store_name) if store_name else None
    if store is not None and owner_of(store) in (None, str(raw.id)):
        client.delete_collection(store.name)
