"""The one door to chromadb internals, checked against the chromadb versions cde-rag is tested on.

Chroma's public API gives a collection no way to reach the collection that stores its corpus
context: an embedding function Chroma rebuilds from its config gets no client, and a
`Collection` hides the connection it talks through. So cde-rag relies on a few internals, all of
them here and nowhere else:

- the connection behind a `Collection` (`Collection._client`) and the embedding function it was
  opened with (`Collection._embedding_function`);
- a `Collection` made from a connection and a collection record, without an embedding function;
- the connections this process has open (`SharedSystemClient._identifier_to_system`);
- the tenant and database a client works in (`Client.tenant`, `Client.database`).

Importing this module refuses a chromadb outside `SUPPORTED`, and a missing internal is an
`UnsupportedChromaError` naming that range rather than an `AttributeError` deep in Chroma.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import chromadb
from chromadb.api import ClientAPI, ServerAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import DEFAULT_DATABASE, DEFAULT_TENANT

from ..errors import CDEError

# Keep in step with the `chromadb` bounds of the chroma and demo extras in pyproject.toml.
SUPPORTED = ">=1.5,<1.6"
_LOWEST = (1, 5)  # first minor version supported
_BEYOND = (1, 6)  # first minor version not supported


class UnsupportedChromaError(CDEError, ImportError):
    """The installed chromadb is outside the range cde-rag supports (its internals differ)."""


def _unsupported(version: str, why: str) -> UnsupportedChromaError:
    return UnsupportedChromaError(
        f"cde_rag.chroma supports chromadb {SUPPORTED}, but chromadb {version} is installed "
        f"({why}). Install a supported version: pip install 'chromadb{SUPPORTED}'."
    )


def check_version(version: str) -> None:
    """Refuse a chromadb version outside `SUPPORTED`."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or not _LOWEST <= (int(match[1]), int(match[2])) < _BEYOND:
        raise _unsupported(version, "cde-rag relies on Chroma internals other versions may change")


def _internal(owner: Any, attribute: str) -> Any:
    try:
        return getattr(owner, attribute)
    except AttributeError:
        kind = owner if isinstance(owner, type) else type(owner)
        why = f"it has no {kind.__name__}.{attribute}"
        raise _unsupported(chromadb.__version__, why) from None


def server_of(collection: Collection) -> ServerAPI:
    """The connection a collection talks through (a local system or an HTTP client)."""
    return _internal(collection, "_client")


def embedding_function_of(collection: Collection) -> Any:
    """The embedding function the `Collection` object was opened with (None if none)."""
    return _internal(collection, "_embedding_function")


def collection_from(server: ServerAPI, name: str, tenant: str, database: str) -> Collection:
    """Collection `name` of `tenant`/`database` through `server`, with no embedding function.

    Raises chromadb's NotFoundError when there is no such collection."""
    record = server.get_collection(name=name, tenant=tenant, database=database)
    return Collection(client=server, model=record, embedding_function=None)


def open_servers() -> Iterator[ServerAPI]:
    """The connections of every Chroma client this process has made (skipping closed ones)."""
    for system in list(_internal(SharedSystemClient, "_identifier_to_system").values()):
        try:
            server = system.instance(ServerAPI)
        except Exception:  # stopped meanwhile: look at the others
            continue
        yield server


def scope_of(client: ClientAPI) -> tuple[str, str]:
    """The tenant and database a client works in."""
    return _internal(client, "tenant"), _internal(client, "database")


def default_scope() -> tuple[str, str]:
    """Chroma's default tenant and database (what a config written without them means)."""
    return DEFAULT_TENANT, DEFAULT_DATABASE


check_version(chromadb.__version__)
_internal(SharedSystemClient, "_identifier_to_system")  # a class attribute: check it now
