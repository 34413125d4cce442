"""LangChain adapter: `CDEEmbeddings`, a corpus-aware `Embeddings` for cde-small-v2.

Shaped like langchain-huggingface's `HuggingFaceEmbeddings`, plus what a contextual model needs:
a corpus context, fitted once on the whole corpus before anything is embedded.

    emb = CDEEmbeddings(model="jxm/cde-small-v2", corpus=docs)  # fits on all docs
    store = InMemoryVectorStore.from_documents(docs, emb)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        'cde_rag.langchain needs langchain-core: pip install "cde-rag[langchain]"'
    ) from exc
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from ._adapters import (
    DEFAULT_MODEL,
    ContextHolder,
    ContextSource,
    StaleVectorsWarning,
    load_model,
    require_text,
    require_texts,
)
from .context import DEFAULT_SEED, CorpusContext
from .errors import InputError
from .model import CDEModel
from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

__all__ = ["CDEEmbeddings", "StaleVectorsWarning"]

_MODEL_KWARGS = ("revision", "device", "dtype", "token")
_ENCODE_KWARGS = ("batch_size", "show_progress")


class CDEEmbeddings(BaseModel, Embeddings):
    """cde-small-v2 embeddings for LangChain, conditioned on one corpus context.

    Give the context up front: `corpus=` (fits now, on every document), `context=` (a
    `CorpusContext` or a saved context file), or `fallback=True` (no corpus, weaker). Without
    one, embedding raises `NotFittedError` instead of fitting on whatever slice arrives first.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        protected_namespaces=(),
        arbitrary_types_allowed=True,
    )

    model_name: str = Field(default=DEFAULT_MODEL, alias="model")
    """Hub id or checkpoint folder; `model=` also accepts a loaded `CDEModel` to share it."""
    cache_folder: str | None = None
    """Where to download the checkpoint (a private load, not the process-wide shared model)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Loading options: revision, device, dtype, token."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Embedding options: batch_size, show_progress (override the fields of the same name)."""
    show_progress: bool | None = None
    """Progress bars: None shows them for long work (fitting, large batches)."""
    batch_size: int = Field(default=32, gt=0)
    device: str | None = None
    dtype: str | None = None
    """None or "float32" (exact), "bfloat16" (fast)."""
    query_prefix: str = QUERY_PREFIX
    """The prefix cde-small-v2 was trained with; the engine adds it, it cannot be changed."""
    document_prefix: str = DOCUMENT_PREFIX
    """The prefix cde-small-v2 was trained with; the engine adds it, it cannot be changed."""

    _holder: ContextHolder = PrivateAttr()

    def __init__(
        self,
        *,
        corpus: Iterable[str | Document] | None = None,
        context: ContextSource | None = None,
        fallback: bool = False,
        seed: int = DEFAULT_SEED,
        **data: Any,
    ):
        loaded = None
        for key in ("model", "model_name"):
            if isinstance(data.get(key), CDEModel):
                loaded = data.pop(key)
                data["model_name"] = loaded.name
        super().__init__(**data)
        if sum(x is not None for x in (corpus, context)) + bool(fallback) > 1:
            raise ValueError("Pass only one of corpus=, context= and fallback=True.")
        options = self.model_kwargs
        model = load_model(
            loaded if loaded is not None else self.model_name,
            revision=options.get("revision"),
            device=self.device or options.get("device"),
            dtype=self.dtype or options.get("dtype"),
            cache_folder=self.cache_folder,
            token=options.get("token"),
        )
        self._holder = ContextHolder(model, type(self).__name__)
        if corpus is not None:
            self.fit(corpus, seed=seed)
        elif context is not None:
            self.set_context(context)
        elif fallback:
            self.use_fallback_context()

    @field_validator("model_kwargs")
    @classmethod
    def _check_model_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_keys(value, _MODEL_KWARGS, "model_kwargs")

    @field_validator("encode_kwargs")
    @classmethod
    def _check_encode_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_keys(value, _ENCODE_KWARGS, "encode_kwargs")

    @field_validator("query_prefix", "document_prefix")
    @classmethod
    def _check_prefix(cls, value: str, info: ValidationInfo) -> str:
        expected = QUERY_PREFIX if info.field_name == "query_prefix" else DOCUMENT_PREFIX
        if value != expected:
            raise ValueError(
                f"{info.field_name} is fixed to {expected!r}: cde-small-v2 was trained with it and "
                "the engine adds it to every text. Leave it at its default (texts are embedded "
                "without any other prefix)."
            )
        return value

    # -- context -----------------------------------------------------------------------------

    @property
    def model(self) -> CDEModel:
        """The loaded model; pass it as `model=` to other adapters to share its weights."""
        return self._holder.model

    @property
    def context(self) -> CorpusContext | None:
        return self._holder.context

    @property
    def is_fitted(self) -> bool:
        return self._holder.context is not None

    @property
    def context_fingerprint(self) -> str | None:
        context = self._holder.context
        return context.fingerprint if context is not None else None

    def fit(self, corpus: Iterable[str | Document], seed: int = DEFAULT_SEED) -> CDEEmbeddings:
        """Fit the context on the whole corpus (strings or Documents), replacing any other."""
        self._holder.fit(
            _texts(corpus, "corpus"),
            seed=seed,
            batch_size=self._batch_size,
            show_progress=self._show_progress,
        )
        return self

    def set_context(self, context: ContextSource) -> CDEEmbeddings:
        """Use a `CorpusContext`, or load one saved with `save_context`."""
        self._holder.set(context)
        return self

    def use_fallback_context(self) -> CDEEmbeddings:
        """Opt in to the model card's no-corpus fallback (random strings); weaker than a fit."""
        self._holder.use_fallback(batch_size=self._batch_size, show_progress=self._show_progress)
        return self

    def save_context(self, path: str | os.PathLike) -> Path:
        """Save the context next to the vectors it produced, to reload it with `context=path`."""
        return self._holder.save(path)

    # -- embedding ---------------------------------------------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self._holder.embed(
            require_texts(texts),
            "document",
            batch_size=self._batch_size,
            show_progress=self._show_progress,
        )
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        vectors = self._holder.embed(
            [require_text(text)], "query", batch_size=self._batch_size, show_progress=False
        )
        return vectors[0].tolist()

    # The inherited aembed_documents / aembed_query run these in a worker thread, which keeps
    # the event loop free; the model is thread-safe, so concurrent tasks are fine.

    @property
    def _batch_size(self) -> int:
        return self.encode_kwargs.get("batch_size", self.batch_size)

    @property
    def _show_progress(self) -> bool | None:
        return self.encode_kwargs.get("show_progress", self.show_progress)

    def __repr__(self) -> str:
        return (
            f"CDEEmbeddings(model={self.model_name!r}, context="
            f"{self.context_fingerprint[:12] if self.context_fingerprint else None})"
        )


def _texts(corpus: object, what: str) -> list[str]:
    """Texts from strings or LangChain Documents (their page_content, what stores embed)."""
    if corpus is None or isinstance(corpus, (str, bytes, Document)):
        shown = "None" if corpus is None else f"one {type(corpus).__name__}"
        raise InputError(f"{what} must be a list of strings or Documents, not {shown}.")
    if not isinstance(corpus, Iterable):
        raise InputError(
            f"{what} must be a list of strings or Documents, got {type(corpus).__name__}."
        )
    return [item.page_content if isinstance(item, Document) else item for item in corpus]


def _check_keys(value: dict[str, Any], allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(
            f"{what} does not take {unknown}; it accepts {list(allowed)}. "
            "(Vectors are always L2-normalised.)"
        )
    return value
