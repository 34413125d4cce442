"""`CDEEmbeddingFunction`: the embedding function cde-rag registers with Chroma.

Chroma persists a collection's embedding function as a name plus a small JSON config, and
rebuilds it from that config on every collection operation, in any process. So the config names
what is needed to embed consistently (model, revision, model fingerprint, the context's
fingerprint and checksum, the companion collection holding the context) and nothing large, is
validated against a JSON schema, and building from it is cheap: the model is shared
process-wide and loads on first use, the context is read from Chroma on first use and cached by
checksum. Configs written before contexts had a checksum (their `context_fingerprint` is the
checksum, and `context_checksum` is absent) still work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from .._adapters import DEFAULT_MODEL
from ..context import CorpusContext
from ..errors import ContextError, ContextMismatchError
from ..model import CDEModel, DTypeLike, shared_model
from ._compat import default_scope
from .context_store import find_context

EF_NAME = "cde-rag"
CONFIG_VERSION = 1
SPACE: Space = "cosine"

_OPTIONAL_TEXT = {"type": ["string", "null"]}
CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cde-rag embedding function configuration",
    "type": "object",
    "properties": {
        "version": {"type": "integer", "minimum": 1},
        "model": {"type": "string", "minLength": 1},
        "revision": _OPTIONAL_TEXT,
        "model_fingerprint": _OPTIONAL_TEXT,
        "context_fingerprint": {"type": "string", "minLength": 1},
        "context_checksum": _OPTIONAL_TEXT,
        "context_collection": _OPTIONAL_TEXT,
        "tenant": _OPTIONAL_TEXT,
        "database": _OPTIONAL_TEXT,
    },
    "required": ["model", "context_fingerprint"],
    "additionalProperties": False,
}


def model_spec(model: str | os.PathLike[str] | CDEModel) -> str:
    """What the config records as the model: a hub id, or a local folder as an absolute path."""
    name = model.name if isinstance(model, CDEModel) else os.fspath(model)
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


@register_embedding_function
class CDEEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function: documents via `__call__`, queries via `embed_query`.

    Bound to one corpus context. Its config (what Chroma persists) names the model, the
    context's fingerprint and checksum and the companion collection that stores the context, so
    Chroma can rebuild it in any process; the context itself is read lazily from Chroma and
    checked against them.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | CDEModel = DEFAULT_MODEL,
        *,
        context: CorpusContext | None = None,
        context_fingerprint: str | None = None,
        context_checksum: str | None = None,
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
        if context is not None and context_fingerprint is None:
            context_fingerprint, context_checksum = context.fingerprint, context.checksum
        elif context is not None and not context.matches(context_fingerprint, context_checksum):
            raise ContextMismatchError(
                f"context_fingerprint {context_fingerprint} (checksum {context_checksum}) does not "
                f"match the context given ({context.fingerprint}, checksum {context.checksum})."
            )
        self._model = model if isinstance(model, CDEModel) else None
        self.model_spec = model_spec(model)
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self._context = context
        # As recorded (a collection of the previous format keeps its record unchanged).
        self.context_fingerprint = str(context_fingerprint)
        self.context_checksum = context_checksum
        if model_fingerprint is None and context is not None:
            model_fingerprint = context.model_fingerprint
        self.model_fingerprint = model_fingerprint
        self.context_collection = context_collection
        self.tenant = tenant
        self.database = database

    # Chroma's registry protocol ------------------------------------------------------------

    @staticmethod
    def name() -> str:
        return EF_NAME

    def get_config(self) -> dict[str, Any]:
        config = {
            "version": CONFIG_VERSION,
            "model": self.model_spec,
            "revision": self.revision,
            "model_fingerprint": self.model_fingerprint,
            "context_fingerprint": self.context_fingerprint,
            "context_checksum": self.context_checksum,
            "context_collection": self.context_collection,
            "tenant": self.tenant,
            "database": self.database,
        }
        if self.context_checksum is None:  # a record of the previous format, kept as it was
            del config["context_checksum"]
        return config

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> CDEEmbeddingFunction:
        """Cheap: nothing loads until the first embedding (Chroma calls this on every operation)."""
        CDEEmbeddingFunction.validate_config(config)
        return CDEEmbeddingFunction(
            config["model"],
            context_fingerprint=config["context_fingerprint"],
            context_checksum=config.get("context_checksum"),
            context_collection=config.get("context_collection"),
            tenant=config.get("tenant"),
            database=config.get("database"),
            revision=config.get("revision"),
            model_fingerprint=config.get("model_fingerprint"),
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Refuse a config this cde-rag cannot use, saying why (a newer writer, or not ours)."""
        version = config.get("version", CONFIG_VERSION)
        if isinstance(version, int) and version > CONFIG_VERSION:
            raise ContextError(
                f"This collection was written by a newer cde-rag (config version {version}); "
                "upgrade cde-rag."
            )
        missing = [k for k in CONFIG_SCHEMA["required"] if not config.get(k)]
        if missing:
            raise ContextError(
                f"cde-rag embedding function config lacks {missing}; the collection was not "
                "made by cde_rag.chroma.create_collection."
            )
        try:
            jsonschema.validate(instance=config, schema=CONFIG_SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path) or "the config"
            raise ContextError(
                f"cde-rag embedding function config is malformed at {where}: {exc.message}. It "
                "was altered after cde_rag.chroma.create_collection wrote it; re-create the "
                "collection (or restore its configuration)."
            ) from None

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        """Refuse swapping the context under stored vectors: that needs a re-embed."""
        for key in ("context_fingerprint", "context_checksum", "model_fingerprint"):
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
            tenant, database = default_scope()
            self._context = find_context(
                self.context_fingerprint,
                self.context_checksum,
                self.context_collection,
                self.tenant or tenant,
                self.database or database,
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
