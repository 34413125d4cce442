"""Move a collection to a new corpus context: refit means re-embed, with no downtime.

Every document is re-embedded into a staging collection that takes the old one's name only when
complete; staging records which context collection (and owner) it replaces, so a run killed at
any point is finished by running it again. The finished collection's fit baseline is the records
it holds (`tracking`), so its context status starts afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from ..context import DEFAULT_SEED, CorpusContext
from ..errors import ContextError
from ..model import CDEModel, shared_model
from .collection import (
    REBUILD_SUFFIX,
    ModelSource,
    cde_config,
    create,
    delete_collection,
    name_lock,
    open_collection,
)
from .context_store import context_collection_name, get_raw, owner_of
from .records import ProgressCallback, add_documents
from .tracking import fit_metadata

# A rebuild's staging collection records the context collection (and its owner) it replaces.
_REPLACES_KEY = "cde_rag_replaces_context"
_REPLACES_OWNER_KEY = "cde_rag_replaces_owner"


def rebuild_collection(
    client: ClientAPI,
    name: str,
    *,
    corpus: Sequence[str] | None = None,
    context: CorpusContext | None = None,
    model: ModelSource | None = None,
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
    with name_lock(name):
        staging_name = name + REBUILD_SUFFIX
        old = get_raw(client, name)
        staging = get_raw(client, staging_name)
        if old is None:
            if staging is None:
                raise NotFoundError(f"Collection {name!r} does not exist; nothing to rebuild.")
            return _finish_rebuild(client, name, staging, model)
        config = cde_config(old)
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
        staged = cde_config(staging) if staging is not None else None
        if staged is not None and not context.matches(
            staged["context_fingerprint"], staged.get("context_checksum")
        ):
            delete_collection(client, staging_name)  # a different, abandoned rebuild
            staging = None
        if staging is None:
            staging = create(
                client,
                staging_name,
                loaded,
                context,
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


def _finish_rebuild(
    client: ClientAPI,
    name: str,
    staging: Collection,
    model: ModelSource | None,
) -> Collection:
    """The old collection is gone: drop its context collection, give staging its name."""
    meta = dict(staging.metadata or {})
    replaced = meta.get(_REPLACES_KEY)
    old_store = get_raw(client, str(replaced)) if replaced else None
    live_store = cde_config(staging).get("context_collection")
    if (
        old_store is not None
        and old_store.name != live_store
        and owner_of(old_store) in (None, meta.get(_REPLACES_OWNER_KEY))
    ):
        client.delete_collection(old_store.name)
    # Chroma replaces metadata whole and drops keys set to None: this keeps the user's keys.
    # The new context was fitted for exactly the records staging holds: the status resets.
    finished = {**meta, _REPLACES_KEY: None, _REPLACES_OWNER_KEY: None}
    staging.modify(name=name, metadata={**finished, **fit_metadata(staging.count())})
    return open_collection(client, name, model=model)
