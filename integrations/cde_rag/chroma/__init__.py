"""Chroma collections that carry their corpus context, so every process embeds with the same one.

A CDE vector is only meaningful next to the context it was embedded with. This module keeps that
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
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from chromadb.api import ClientAPI, ServerAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.errors import NotFoundError
from chromadb.utils.embedding_functions import register_embedding_function
from tqdm.auto import tqdm

from ..context import DEFAULT_SEED, CorpusContext
from ..errors import CDEError, CheckpointError, ContextError, ContextMismatchError, InputError
from ..model import PROGRESS_MIN_TEXTS, CDEModel, DTypeLike, check_texts, shared_model

if TYPE_CHECKING:
    from ..langchain import CDEEmbeddings
    from ..llama_index import CDEEmbedding

__all__ = [
    "DEFAULT_MODEL",
    "EF_NAME",
    "MAX_NAME_LENGTH",
    "AddResult",
    "CDEEmbeddingFunction",
    "CollectionExistsError",
    "add_documents",
    "create_collection",
    "delete_collection",
    "document_id",
    "get_context",
    "get_model",
    "langchain_embeddings",
    "llama_index_embedding",
    "open_collection",
    "rebuild_collection",
]

DEFAULT_MODEL = "jxm/cde-small-v2"
EF_NAME = "cde-rag"
CONFIG_VERSION = 1
CONTEXT_FORMAT = "cde-rag-chroma-context/1"
DEFAULT_ADD_BATCH = 128
# Chroma allows 512 characters; the context collection's name adds up to 32 to the collection's.
MAX_NAME_LENGTH = 480
SPACE: Space = "cosine"

# Keys of the companion collection's metadata (Chroma metadata holds scalars only).
_ROLE_KEY = "cde_rag_role"
_ROLE_CONTEXT = "context"
_META_PREFIX = "cde_rag_"
# A rebuild's staging collection records the context collection (and its owner) it replaces.
_REBUILD_SUFFIX = "-cde-rebuild"
_REPLACES_KEY = "cde_rag_replaces_context"
_REPLACES_OWNER_KEY = "cde_rag_replaces_owner"
# The id of the collection whose vectors a context collection's context made.
_OWNER_KEY = "cde_rag_owner"

ProgressCallback = Callable[[int, int], None]


class CollectionExistsError(CDEError, ValueError):
    """`create_collection` was asked to create a collection that already exists."""


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


def context_collection_name(name: str, fingerprint: str) -> str:
    """Where the context of collection `name` lives: one companion per collection and context."""
    return f"{name}-cde-context-{fingerprint[:16]}"


# -- the context cache and the companion collection ---------------------------------------------

_CONTEXTS: dict[str, CorpusContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _remember(context: CorpusContext) -> CorpusContext:
    with _CONTEXTS_LOCK:
        return _CONTEXTS.setdefault(context.fingerprint, context)


def _context_metadata(context: CorpusContext) -> dict[str, Any]:
    meta: dict[str, Any] = {
        _ROLE_KEY: _ROLE_CONTEXT,
        "cde_rag_format": CONTEXT_FORMAT,
        "cde_rag_fingerprint": context.fingerprint,
        "cde_rag_model_name": context.model_name,
        "cde_rag_model_fingerprint": context.model_fingerprint,
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


def _write_context(client: ClientAPI, base: str, context: CorpusContext) -> str:
    """Store the context's rows in a companion collection; return its name.

    A complete copy left by an interrupted run is reused and a torn one replaced; a name taken
    by the context of a live collection (one renamed away, say) is skipped.
    """
    for attempt in range(1, 100):
        name = base if attempt == 1 else f"{base}-{attempt}"
        existing = _get_raw(client, name)
        if existing is not None:
            owner = (existing.metadata or {}).get(_OWNER_KEY)
            if owner and _alive(client, str(owner)):
                continue
            try:
                _read_context(existing, context.fingerprint)
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
    from uuid import UUID

    try:
        client.get_collection_by_id(UUID(collection_id), embedding_function=None)
    except (NotFoundError, ValueError):
        return False
    return True


def _claim(store: Collection, owner: Collection) -> None:
    """Record which collection's vectors depend on this context (Chroma replaces metadata whole)."""
    store.modify(metadata={**(store.metadata or {}), _OWNER_KEY: str(owner.id)})


def _read_context(store: Collection, fingerprint: str) -> CorpusContext:
    """The context in companion collection `store`, refused unless it matches `fingerprint`."""
    meta = store.metadata or {}
    remedy = (
        "Vectors in the collection can only be queried with the context they were embedded "
        "with: rebuild the collection with a new context (cde_rag.chroma.rebuild_collection), "
        "which re-embeds its documents."
    )
    if meta.get(_ROLE_KEY) != _ROLE_CONTEXT or meta.get("cde_rag_format") != CONTEXT_FORMAT:
        raise ContextError(
            f"Chroma collection {store.name!r} is not a cde-rag context store (its metadata lacks "
            f"the cde-rag context record). {remedy}"
        )
    if meta.get("cde_rag_fingerprint") != fingerprint:
        raise ContextError(
            f"Context collection {store.name!r} holds context "
            f"{str(meta.get('cde_rag_fingerprint'))[:12]}, but the collection was embedded with "
            f"{fingerprint[:12]}: it was altered or replaced. {remedy}"
        )
    with _CONTEXTS_LOCK:
        cached = _CONTEXTS.get(fingerprint)
    size = int(meta.get("cde_rag_size", 0))
    count = store.count()
    if count != size:
        raise ContextError(
            f"Context collection {store.name!r} holds {count} of the context's {size} rows: it "
            f"was altered or only partly written. {remedy}"
        )
    if cached is not None:
        return cached
    got = store.get(include=["embeddings", "documents"])  # type: ignore[list-item]
    order = np.argsort(got["ids"])
    ids = [got["ids"][i] for i in order]
    if ids != _row_ids(size):
        raise ContextError(f"Context collection {store.name!r} has unexpected row ids. {remedy}")
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
        )
    except (KeyError, ValueError) as exc:
        raise ContextError(
            f"Context collection {store.name!r} is malformed ({exc}). {remedy}"
        ) from exc
    if context.fingerprint != fingerprint:
        raise ContextError(
            f"Context collection {store.name!r} was altered: its rows no longer match the "
            f"fingerprint {fingerprint[:12]} the collection was embedded with. {remedy}"
        )
    return _remember(context)


def _load_context(owner: Collection, store_name: str, fingerprint: str) -> CorpusContext:
    server = _server(owner)
    try:
        model = server.get_collection(name=store_name, tenant=owner.tenant, database=owner.database)
    except NotFoundError:
        raise ContextError(
            f"The corpus context of collection {owner.name!r} is missing: its context collection "
            f"{store_name!r} was deleted. Its vectors cannot be queried consistently any more; "
            "re-embed them with a new context: cde_rag.chroma.rebuild_collection(client, "
            f"{owner.name!r}) (fits on the stored documents, or pass corpus=/context=)."
        ) from None
    store = Collection(client=server, model=model, embedding_function=None)
    claimed = (store.metadata or {}).get(_OWNER_KEY)
    if claimed and claimed != str(owner.id):
        raise ContextMismatchError(
            f"Collection {owner.name!r} names context collection {store_name!r}, which belongs "
            "to another collection: its embedding function configuration was replaced (e.g. by "
            "collection.modify(configuration=...)), and its vectors were not embedded with that "
            "context. Re-embed with cde_rag.chroma.rebuild_collection(client, "
            f"{owner.name!r}, corpus=...)."
        )
    context = _read_context(store, fingerprint)
    if not claimed:
        _claim(store, owner)  # creation was interrupted right after creating the collection
    return context


def _find_context(fingerprint: str, store_name: str, tenant: str, database: str) -> CorpusContext:
    """Find a context for an embedding function Chroma rebuilt from config (it has no client).

    `client.get_collection(name)` hands Chroma's rebuilt function nothing but its config, so look
    through the Chroma connections this process has opened; the fingerprint check makes any copy
    found as good as any other.
    """
    with _CONTEXTS_LOCK:
        cached = _CONTEXTS.get(fingerprint)
    if cached is not None:
        return cached
    for system in list(SharedSystemClient._identifier_to_system.values()):
        try:
            server = system.instance(ServerAPI)
            model = server.get_collection(name=store_name, tenant=tenant, database=database)
        except Exception:  # not in this connection (or it is down): try the next one
            continue
        store = Collection(client=server, model=model, embedding_function=None)
        return _read_context(store, fingerprint)
    raise ContextError(
        f"The corpus context {fingerprint[:12]} (Chroma collection {store_name!r}) was not found "
        "through any Chroma client of this process. Open the collection with "
        "cde_rag.chroma.open_collection(client, name), which loads and checks its context."
    )


# -- the embedding function --------------------------------------------------------------------


def _model_spec(model: str | os.PathLike[str] | CDEModel) -> str:
    name = model.name if isinstance(model, CDEModel) else os.fspath(model)
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


@register_embedding_function
class CDEEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function: documents via `__call__`, queries via `embed_query`.

    Bound to one corpus context. Its config (what Chroma persists) names the model, the context
    fingerprint and the companion collection that stores the context, so Chroma can rebuild it
    in any process; the context itself is read lazily from Chroma and checked against the
    fingerprint.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | CDEModel = DEFAULT_MODEL,
        *,
        context: CorpusContext | None = None,
        context_fingerprint: str | None = None,
        context_collection: str | None = None,
        tenant: str | None = None,
        database: str | None = None,
        revision: str | None = None,
        model_fingerprint: str | None = None,
        device: str | None = None,
        dtype: DTypeLike = None,
    ) -> None:
        if context is None and context_fingerprint is None:
            raise ContextError(
                "CDEEmbeddingFunction needs the corpus context it embeds with: pass context= "
                "(or use cde_rag.chroma.create_collection / open_collection, which handle it)."
            )
        if context is not None and context_fingerprint not in (None, context.fingerprint):
            raise ContextMismatchError(
                f"context_fingerprint {context_fingerprint} does not match the context given "
                f"({context.fingerprint})."
            )
        self._model = model if isinstance(model, CDEModel) else None
        self.model_spec = _model_spec(model)
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self._context = context
        self.context_fingerprint = context.fingerprint if context else str(context_fingerprint)
        self.model_fingerprint = context.model_fingerprint if context else model_fingerprint
        self.context_collection = context_collection
        self.tenant = tenant
        self.database = database

    # Chroma's registry protocol ------------------------------------------------------------

    @staticmethod
    def name() -> str:
        return EF_NAME

    def get_config(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "model": self.model_spec,
            "revision": self.revision,
            "model_fingerprint": self.model_fingerprint,
            "context_fingerprint": self.context_fingerprint,
            "context_collection": self.context_collection,
            "tenant": self.tenant,
            "database": self.database,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> CDEEmbeddingFunction:
        """Cheap: nothing loads until the first embedding (Chroma calls this on every operation)."""
        CDEEmbeddingFunction.validate_config(config)
        return CDEEmbeddingFunction(
            config["model"],
            context_fingerprint=config["context_fingerprint"],
            context_collection=config.get("context_collection"),
            tenant=config.get("tenant"),
            database=config.get("database"),
            revision=config.get("revision"),
            model_fingerprint=config.get("model_fingerprint"),
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        missing = [k for k in ("model", "context_fingerprint") if not config.get(k)]
        if missing:
            raise ContextError(
                f"cde-rag embedding function config lacks {missing}; the collection was not "
                "made by cde_rag.chroma.create_collection."
            )
        if config.get("version", CONFIG_VERSION) > CONFIG_VERSION:
            raise ContextError(
                f"This collection was written by a newer cde-rag (config version "
                f"{config['version']}); upgrade cde-rag."
            )

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        """Refuse swapping the context under stored vectors: that needs a re-embed."""
        for key in ("context_fingerprint", "model_fingerprint"):
            if old_config.get(key) != new_config.get(key):
                raise ContextMismatchError(
                    f"Refusing to change the {key.split('_')[0]} of a collection: its stored "
                    f"vectors were embedded with {key} {str(old_config.get(key))[:12]}, and "
                    "mixing contexts breaks retrieval. To move to a new context, re-embed: "
                    "cde_rag.chroma.rebuild_collection(client, name, corpus=... or context=...)."
                )

    def default_space(self) -> Space:
        return SPACE

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]  # vectors are unit length: all three rank alike

    # Embedding ------------------------------------------------------------------------------

    @property
    def model(self) -> CDEModel:
        """The process-wide shared model, loaded on first use."""
        if self._model is None:
            self._model = shared_model(
                self.model_spec, revision=self.revision, device=self.device, dtype=self.dtype
            )
        return self._model

    @property
    def context(self) -> CorpusContext:
        """The corpus context, read from Chroma once per process and checked."""
        if self._context is None:
            if not self.context_collection:
                raise ContextError(
                    f"No corpus context {self.context_fingerprint[:12]} is loaded and this "
                    "embedding function does not say where it is stored; use "
                    "cde_rag.chroma.open_collection(client, name)."
                )
            self._context = _find_context(
                self.context_fingerprint,
                self.context_collection,
                self.tenant or _default_tenant(),
                self.database or _default_database(),
            )
        return self._context

    def embed_documents(
        self, texts: Sequence[str], show_progress: bool | None = None
    ) -> np.ndarray:
        """Documents as a float32 matrix (what `add_documents` stores)."""
        return self.model.embed_documents(texts, context=self.context, show_progress=show_progress)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed_documents(input))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self.model.embed_queries(input, context=self.context))

    def __repr__(self) -> str:
        return (
            f"CDEEmbeddingFunction(model={self.model_spec!r}, "
            f"context={self.context_fingerprint[:12]}, stored_in={self.context_collection!r})"
        )


def _default_tenant() -> str:
    from chromadb.config import DEFAULT_TENANT

    return DEFAULT_TENANT


def _default_database() -> str:
    from chromadb.config import DEFAULT_DATABASE

    return DEFAULT_DATABASE


# -- reading a collection's cde-rag record -----------------------------------------------------


def _cde_config(collection: Collection) -> dict[str, Any]:
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


def _server(collection: Collection) -> ServerAPI:
    return collection._client  # the ServerAPI every Collection talks through


def get_context(collection: Collection) -> CorpusContext:
    """The corpus context stored with a cde-rag collection, checked against its fingerprint.

    Use it to build LangChain / LlamaIndex embeddings that agree with the stored vectors.
    """
    config = _cde_config(collection)
    store = config.get("context_collection")
    if not store:
        raise ContextError(
            f"Collection {collection.name!r} does not record where its context is stored: its "
            "embedding function configuration was replaced (e.g. by collection.modify("
            "configuration=...)). Re-embed with cde_rag.chroma.rebuild_collection(client, "
            f"{collection.name!r}, corpus=...)."
        )
    return _load_context(collection, store, config["context_fingerprint"])


def get_model(collection: Collection) -> CDEModel:
    """The (shared) model a cde-rag collection was embedded with."""
    ef = collection._embedding_function
    if isinstance(ef, CDEEmbeddingFunction):
        return ef.model
    config = _cde_config(collection)
    model = shared_model(config["model"], revision=config.get("revision"))
    if config.get("model_fingerprint") not in (None, model.fingerprint):
        raise ContextMismatchError(
            f"The checkpoint at {config['model']!r} is not the model collection "
            f"{collection.name!r} was embedded with (fingerprint {model.fingerprint[:12]}, "
            f"expected {str(config['model_fingerprint'])[:12]}). Open it with "
            "cde_rag.chroma.open_collection(client, name, model=<the original checkpoint>)."
        )
    return model


def langchain_embeddings(collection: Collection, **kwargs: Any) -> CDEEmbeddings:
    """LangChain `Embeddings` (cde_rag.langchain.CDEEmbeddings) with the collection's stored
    model and context, for `langchain_chroma.Chroma(client=..., collection_name=...)`."""
    from ..langchain import CDEEmbeddings

    return CDEEmbeddings(model=get_model(collection), context=get_context(collection), **kwargs)


def llama_index_embedding(collection: Collection, **kwargs: Any) -> CDEEmbedding:
    """A LlamaIndex embedding (cde_rag.llama_index.CDEEmbedding) with the collection's stored
    model and context, for `ChromaVectorStore(chroma_collection=collection)`."""
    from ..llama_index import CDEEmbedding

    return CDEEmbedding(model=get_model(collection), context=get_context(collection), **kwargs)


def _bound_function(collection: Collection) -> CDEEmbeddingFunction:
    """The collection's embedding function, refused unless it uses the stored context."""
    context = get_context(collection)
    config = _cde_config(collection)
    ef = collection._embedding_function
    if isinstance(ef, CDEEmbeddingFunction):
        if ef.context_fingerprint != context.fingerprint:
            raise ContextMismatchError(
                f"Refusing to add to {collection.name!r} with context "
                f"{ef.context_fingerprint[:12]}: its vectors were embedded with the stored context "
                f"{context.fingerprint[:12]}. Open it with cde_rag.chroma.open_collection(client, "
                f"{collection.name!r}) instead of passing another embedding function, or move "
                "it to the new context with rebuild_collection (re-embeds)."
            )
        ef._context = context
        return ef
    return _function_for(config, context, model=None)


def _function_for(
    config: dict[str, Any],
    context: CorpusContext,
    model: str | os.PathLike[str] | CDEModel | None,
    device: str | None = None,
    dtype: DTypeLike = None,
) -> CDEEmbeddingFunction:
    ef = CDEEmbeddingFunction(
        model if model is not None else config["model"],
        context=context,
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


# -- creating and opening ----------------------------------------------------------------------


def _get_raw(client: ClientAPI, name: str) -> Collection | None:
    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None


def create_collection(
    client: ClientAPI,
    name: str,
    *,
    model: str | os.PathLike[str] | CDEModel = DEFAULT_MODEL,
    corpus: Sequence[str] | None = None,
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
    with _name_lock(name):
        existing = _get_raw(client, name)
        if existing is not None:
            return _existing(
                client, existing, model, context, get_or_create, device, dtype, revision
            )
        loaded = (
            shared_model(model, revision=revision, device=device, dtype=dtype)
            if not isinstance(model, CDEModel)
            else model
        )
        if context is None:
            context = loaded.fit_context(corpus, seed=seed, show_progress=show_progress)  # type: ignore[arg-type]
        return _create(
            client, name, loaded, context, revision, metadata, get_or_create, device, dtype
        )


_NAME_LOCKS: dict[str, threading.RLock] = {}


def _name_lock(name: str) -> threading.RLock:
    """Threads of one process create or rebuild a given collection one at a time."""
    with _CONTEXTS_LOCK:
        return _NAME_LOCKS.setdefault(name, threading.RLock())


def _create(
    client: ClientAPI,
    name: str,
    model: CDEModel,
    context: CorpusContext,
    revision: str | None,
    metadata: dict[str, Any] | None,
    get_or_create: bool,
    device: str | None,
    dtype: DTypeLike,
    store: str | None = None,
) -> Collection:
    model.check_context(context)
    store = _write_context(
        client, store or context_collection_name(name, context.fingerprint), context
    )
    _remember(context)
    ef = CDEEmbeddingFunction(
        model,
        context=context,
        context_collection=store,
        tenant=client.tenant,  # type: ignore[attr-defined]
        database=client.database,  # type: ignore[attr-defined]
        revision=revision if revision is not None else model.checkpoint.revision,
        device=device,
        dtype=dtype,
    )
    try:
        created = client.create_collection(
            name,
            embedding_function=ef,  # type: ignore[arg-type]
            metadata=metadata or None,
            configuration={"hnsw": {"space": SPACE}},
        )
    except Exception:
        # Another process may have created it meanwhile: then treat it as existing.
        existing = _get_raw(client, name)
        if existing is None:
            raise
        return _existing(client, existing, model, context, get_or_create, device, dtype, revision)
    _claim(client.get_collection(store, embedding_function=None), created)
    return created


def _existing(
    client: ClientAPI,
    existing: Collection,
    model: str | os.PathLike[str] | CDEModel,
    context: CorpusContext | None,
    get_or_create: bool,
    device: str | None,
    dtype: DTypeLike,
    revision: str | None,
) -> Collection:
    stored = get_context(existing)
    if context is not None and context.fingerprint != stored.fingerprint:
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
    model: str | os.PathLike[str] | CDEModel | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
) -> Collection:
    """Open a cde-rag collection with the model and context it was embedded with.

    `model` overrides where the weights are loaded from (e.g. the checkpoint sits elsewhere on
    this machine); it must be the same model, or the context is refused.
    """
    raw = _get_raw(client, name)
    if raw is None:
        staging = _get_raw(client, name + _REBUILD_SUFFIX)
        hint = (
            f" A rebuild of it was interrupted: run cde_rag.chroma.rebuild_collection(client, "
            f"{name!r}) again to finish it."
            if staging is not None
            else " Create it with cde_rag.chroma.create_collection(client, name, corpus=...)."
        )
        raise NotFoundError(f"Collection {name!r} does not exist.{hint}")
    context = get_context(raw)
    ef = _function_for(_cde_config(raw), context, model, device, dtype)
    return client.get_collection(name, embedding_function=ef)  # type: ignore[arg-type]


def delete_collection(client: ClientAPI, name: str) -> None:
    """Delete a cde-rag collection and its context collection."""
    raw = _get_raw(client, name)
    if raw is None:
        raise NotFoundError(f"Collection {name!r} does not exist.")
    _delete_store_of(client, raw, _cde_config(raw).get("context_collection"))


def _delete_store_of(client: ClientAPI, owner: Collection, store_name: str | None) -> None:
    """Delete `owner`, then its context collection unless another collection uses it."""
    client.delete_collection(owner.name)
    store = _get_raw(client, store_name) if store_name else None
    if store is not None and (store.metadata or {}).get(_OWNER_KEY) in (None, str(owner.id)):
        client.delete_collection(store.name)


# -- adding ------------------------------------------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def add_documents(
    collection: Collection,
    documents: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    metadatas: Sequence[dict[str, Any] | None] | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> AddResult:
    """Embed and store documents not already in the collection, in batches.

    Ids are stable (given, or `document_id(text)`), and ids already stored are skipped before
    embedding, so re-running an interrupted ingestion finishes it without duplicates or
    re-embedding. `progress(done, total)` is called after each batch (total = documents to embed).
    """
    texts = check_texts(documents, "documents")
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
    ef = _bound_function(collection)

    first: dict[str, int] = {}
    for index, (doc_id, text) in enumerate(zip(id_list, texts, strict=True)):
        seen = first.setdefault(doc_id, index)
        if seen != index and texts[seen] != text:
            raise InputError(
                f"Id {doc_id!r} is given for two different documents (#{seen} and #{index}); "
                "ids must identify one document each."
            )
    size = min(batch_size or DEFAULT_ADD_BATCH, _server(collection).get_max_batch_size())
    unique = list(first.values())
    stored: set[str] = set()
    for chunk in _chunks([id_list[i] for i in unique], size):
        stored.update(collection.get(ids=list(chunk), include=[])["ids"])
    todo = [i for i in unique if id_list[i] not in stored]

    total = len(todo)
    show = total >= PROGRESS_MIN_TEXTS if show_progress is None else show_progress
    if progress is not None:
        progress(0, total)
    done = 0
    with tqdm(
        total=total, desc=f"Adding to {collection.name}", unit="doc", disable=not show
    ) as bar:
        for chunk in _chunks(todo, size):
            batch = [texts[i] for i in chunk]
            collection.add(
                ids=[id_list[i] for i in chunk],
                embeddings=ef.embed_documents(batch, show_progress=False),
                documents=batch,
                metadatas=[metadatas[i] or None for i in chunk] if metadatas is not None else None,  # type: ignore[misc]
            )
            done += len(chunk)
            bar.update(len(chunk))
            if progress is not None:
                progress(done, total)
    return AddResult(added=total, skipped=len(texts) - total)


# -- rebuilding with a new context -------------------------------------------------------------


def _all_records(collection: Collection, page: int) -> tuple[list[str], list[str], list[Any]]:
    ids: list[str] = []
    documents: list[str] = []
    metadatas: list[Any] = []
    offset = 0
    while True:
        got = collection.get(include=["documents", "metadatas"], limit=page, offset=offset)  # type: ignore[list-item]
        if not got["ids"]:
            break
        ids += got["ids"]
        documents += got["documents"] or [None] * len(got["ids"])
        metadatas += got["metadatas"] or [None] * len(got["ids"])
        offset += len(got["ids"])
    missing = [i for i, d in zip(ids, documents, strict=True) if d is None]
    if missing:
        raise ContextError(
            f"Collection {collection.name!r} has {len(missing)} records without stored text "
            f"(e.g. {missing[0]!r}); they cannot be re-embedded. Re-ingest them from the source."
        )
    return ids, documents, metadatas


def rebuild_collection(
    client: ClientAPI,
    name: str,
    *,
    corpus: Sequence[str] | None = None,
    context: CorpusContext | None = None,
    model: str | os.PathLike[str] | CDEModel | None = None,
    seed: int = DEFAULT_SEED,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    progress: ProgressCallback | None = None,
) -> Collection:
    """Re-embed every document of `name` with a new context (refit means re-embed).

    The new context is `context`, or fitted on `corpus`, or fitted on the collection's own
    documents. Work goes to a staging collection that replaces the old one only when complete;
    if interrupted, run it again (same arguments) to resume or finish. Documents added to the
    old collection while it is rebuilt are not carried over.
    """
    if corpus is not None and context is not None:
        raise ContextError("Pass corpus= or context= to rebuild_collection, not both.")
    with _name_lock(name):
        staging_name = name + _REBUILD_SUFFIX
        old = _get_raw(client, name)
        staging = _get_raw(client, staging_name)
        if old is None:
            if staging is None:
                raise NotFoundError(f"Collection {name!r} does not exist; nothing to rebuild.")
            return _finish_rebuild(client, name, staging, model)
        config = _cde_config(old)
        ef_model = model if model is not None else config["model"]
        loaded = (
            ef_model
            if isinstance(ef_model, CDEModel)
            else shared_model(ef_model, revision=config.get("revision"))
        )
        page = client.get_max_batch_size()
        ids, documents, metadatas = _all_records(old, page)
        if context is None:
            source = corpus if corpus is not None else documents
            context = loaded.fit_context(source, seed=seed, show_progress=show_progress)
        loaded.check_context(context)
        if (
            staging is not None
            and _cde_config(staging)["context_fingerprint"] != context.fingerprint
        ):
            delete_collection(client, staging_name)  # a different, abandoned rebuild
            staging = None
        if staging is None:
            staging = _create(
                client,
                staging_name,
                loaded,
                context,
                config.get("revision"),
                {
                    **(old.metadata or {}),
                    _REPLACES_KEY: config.get("context_collection"),
                    _REPLACES_OWNER_KEY: str(old.id),
                },
                True,
                None,
                None,
                store=context_collection_name(name, context.fingerprint),
            )
        else:
            staging = open_collection(client, staging_name, model=loaded)
        add_documents(
            staging,
            documents,
            ids=ids,
            metadatas=metadatas,
            batch_size=batch_size,
            show_progress=show_progress,
            progress=progress,
        )
        # Staging now holds everything: only now may the old collection go.
        client.delete_collection(name)
        return _finish_rebuild(client, name, staging, model)


def _finish_rebuild(
    client: ClientAPI,
    name: str,
    staging: Collection,
    model: str | os.PathLike[str] | CDEModel | None,
) -> Collection:
    """The old collection is gone: drop its context collection, give staging its name."""
    meta = dict(staging.metadata or {})
    replaced = meta.get(_REPLACES_KEY)
    old_store = _get_raw(client, str(replaced)) if replaced else None
    live_store = _cde_config(staging).get("context_collection")
    if old_store is not None and old_store.name != live_store:
        owner = (old_store.metadata or {}).get(_OWNER_KEY)
        if owner in (None, meta.get(_REPLACES_OWNER_KEY)):
            client.delete_collection(old_store.name)
    # Chroma replaces metadata whole and drops keys set to None: this keeps the user's keys.
    staging.modify(name=name, metadata={**meta, _REPLACES_KEY: None, _REPLACES_OWNER_KEY: None})
    return open_collection(client, name, model=model)
