"""LangChain adapter: `CDEEmbeddings`, a corpus-aware `Embeddings` for cde-small-v2.

Shaped like langchain-huggingface's `HuggingFaceEmbeddings`, plus what a contextual model needs:
a corpus context, fitted once on the whole corpus before anything is embedded.

    emb = CDEEmbeddings(model="jxm/cde-small-v2", corpus=docs)  # fits on all docs
    store = InMemoryVectorStore.from_documents(docs, emb)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        'cde_rag.langchain needs langchain-core: pip install "cde-rag[langchain]"'
    ) from exc
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._adapters import (
    DEFAULT_MODEL,
    ContextHolder,
    ContextMixin,
    ContextSource,
    EmptyTextWarning,
    StaleVectorsWarning,
    check_fixed_prefix,
    corpus_texts,
    document_texts,
    load_model,
    require_text,
)
from .context import DEFAULT_SEED
from .model import CDEModel
from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

__all__ = ["CDEEmbeddings", "EmptyTextWarning", "StaleVectorsWarning"]

_DROP_EMPTY = (
    "Drop empty documents before adding them: [doc for doc in docs if doc.page_content.strip()]."
)
_MODEL_KWARGS = ("revision", "device", "dtype", "token")
_ENCODE_KWARGS = ("batch_size", "show_progress")
# Settings that are both a field and a key of model_kwargs / encode_kwargs: one value each.
_BOTH_WAYS = {
    "device": "model_kwargs",
    "dtype": "model_kwargs",
    "batch_size": "encode_kwargs",
    "show_progress": "encode_kwargs",
}


class CDEEmbeddings(ContextMixin, BaseModel, Embeddings):
    """cde-small-v2 embeddings for LangChain, conditioned on one corpus context.

    Give the context up front: `corpus=` (fits now, on every document), `context=` (a
    `CorpusContext` or a saved context file), or `fallback=True` (no corpus, weaker). Without
    one, embedding raises `NotFittedError` instead of fitting on whatever slice arrives first.

    As in langchain-huggingface, loading options may go in `model_kwargs` and embedding options
    in `encode_kwargs`; `device`, `dtype`, `batch_size` and `show_progress` are also fields.
    Each setting has one value: give it either way, and giving it both ways with two different
    values is an error (nothing silently wins).

    Empty texts never abort an ingestion: `embed_documents` must return one vector per text, so
    an empty one gets what the model gives it (for "", the document prefix alone) with an
    `EmptyTextWarning`, and a corpus leaves its empty texts out of the context. An empty query
    is refused.
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
    """Loading options: revision, device, dtype, token (device and dtype: or the fields)."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Embedding options: batch_size, show_progress (or the fields of the same name)."""
    show_progress: bool | None = None
    """Progress bars: True, False, or None to show them for long work only (64+ texts)."""
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
        model = load_model(
            loaded if loaded is not None else self.model_name,
            revision=self.model_kwargs.get("revision"),
            device=self._setting("device"),
            dtype=self._setting("dtype"),
            cache_folder=self.cache_folder,
            token=self.model_kwargs.get("token"),
        )
        self._start_context(model, corpus, context, fallback, seed)

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
        return check_fixed_prefix(str(info.field_name), value, expected)

    @model_validator(mode="after")
    def _one_value_per_setting(self) -> CDEEmbeddings:
        for key, where in _BOTH_WAYS.items():
            options = getattr(self, where)
            if (
                key in self.model_fields_set
                and key in options
                and options[key] != getattr(self, key)
            ):
                raise ValueError(
                    f"{key} is given twice with different values: {key}={getattr(self, key)!r} "
                    f"and {where}[{key!r}]={options[key]!r}. Give it once, either way."
                )
        return self

    def _setting(self, key: str) -> Any:
        """The value of a setting that may be given as a field or in model/encode_kwargs."""
        return getattr(self, _BOTH_WAYS[key]).get(key, getattr(self, key))

    # -- embedding ---------------------------------------------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, as LangChain requires; an empty text gets what the model gives
        it, with an `EmptyTextWarning` (see `_adapters.document_texts`)."""
        vectors = self._holder.embed(
            document_texts(texts, _DROP_EMPTY),
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
        return self._setting("batch_size")

    @property
    def _show_progress(self) -> bool | None:
        return self._setting("show_progress")

    def _corpus_texts(self, corpus: object) -> list[str]:
        """Strings, or LangChain Documents as their page_content (what vector stores embed)."""
        return corpus_texts(corpus, Document, _page_content, "strings or Documents")

    def __repr__(self) -> str:
        return (
            f"CDEEmbeddings(model={self.model_name!r}, context="
            f"{self.context_fingerprint[:12] if self.context_fingerprint else None})"
        )


def _page_content(document: Document) -> str:
    return document.page_content


def _check_keys(value: dict[str, Any], allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(
            f"{what} does not take {unknown}; it accepts {list(allowed)}. "
            "(Vectors are always L2-normalised.)"
        )
    return value
