"""LlamaIndex adapter: `CDEEmbedding`, and `CDEContextFit` to fit the context inside a pipeline.

    embed_model = CDEEmbedding(model_name="jxm/cde-small-v2")
    index = VectorStoreIndex.from_documents(
        documents,
        embed_model=embed_model,
        transformations=[SentenceSplitter(), CDEContextFit(embed_model)],
    )

`CDEContextFit` sees every chunk before the embedding step does, and fits the context on all of
them once; later inserts keep that context.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.schema import BaseNode, MetadataMode, TransformComponent
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        'cde_rag.llama_index needs llama-index-core: pip install "cde-rag[llamaindex]"'
    ) from exc
from pydantic import Field, PrivateAttr, ValidationInfo, computed_field, field_validator

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
    shown,
)
from .context import DEFAULT_SEED, CorpusContext
from .errors import ContextMismatchError
from .model import CDEModel, InputType
from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

__all__ = ["CDEContextFit", "CDEEmbedding", "EmptyTextWarning", "StaleVectorsWarning"]

_NO_PROCESSES = (
    "cannot be sent to worker processes (IngestionPipeline.run(num_workers=...) > 1): each "
    "worker would load its own model and see only its share of the chunks, so the context "
    "would be fitted on part of the corpus. Run the pipeline with num_workers=None; the "
    "embedding step is batched already."
)

_DROP_EMPTY = (
    "Drop nodes with no text before inserting them, or run them through an IngestionPipeline "
    "with the embed model (or CDEContextFit) as a step, which drops them."
)


class CDEEmbedding(ContextMixin, BaseEmbedding):
    """cde-small-v2 for LlamaIndex, conditioned on one corpus context.

    Give the context up front: `corpus=` (fits now), `context=` (a `CorpusContext` or a saved
    context file), `fallback=True`, or put `CDEContextFit(embed_model)` in the transformations.
    Without one, embedding raises `NotFittedError`: LlamaIndex embeds in batches, and fitting
    on the first batch would silently use part of the corpus.

    Empty chunks never abort an ingestion. As a pipeline step it drops them with an
    `EmptyTextWarning`; the embedding calls, which must return one vector per text, give an
    empty text what the model gives it (for "", the document prefix alone) with the same
    warning. An empty query is refused.
    """

    model_name: str = Field(
        default=DEFAULT_MODEL, description="Hub id or checkpoint folder of the model."
    )
    embed_batch_size: int = Field(default=32, gt=0, description="Texts per embedding call.")
    cache_folder: str | None = Field(default=None, description="Download folder (private load).")
    revision: str | None = Field(default=None, description="Hub revision to load.")
    device: str | None = Field(default=None, description="cpu, cuda, ... (default: best).")
    dtype: str | None = Field(default=None, description="float32 (exact) or bfloat16 (fast).")
    show_progress_bar: bool | None = Field(
        default=None,
        description="Progress bars: True, False, or None to show them for long work (64+ texts).",
    )
    query_instruction: str = Field(
        default=QUERY_PREFIX, description="Fixed: the prefix the model was trained with."
    )
    text_instruction: str = Field(
        default=DOCUMENT_PREFIX, description="Fixed: the prefix the model was trained with."
    )
    _holder: ContextHolder = PrivateAttr()

    def __init__(
        self,
        model_name: str | CDEModel = DEFAULT_MODEL,
        *,
        model: str | CDEModel | None = None,
        corpus: Iterable[str | BaseNode] | None = None,
        context: ContextSource | None = None,
        fallback: bool = False,
        seed: int = DEFAULT_SEED,
        **kwargs: Any,
    ):
        source = model if model is not None else model_name
        name = source.name if isinstance(source, CDEModel) else source
        expected = kwargs.pop("context_fingerprint", None)
        super().__init__(model_name=name, **kwargs)
        loaded = load_model(
            source,
            revision=self.revision,
            device=self.device,
            dtype=self.dtype,
            cache_folder=self.cache_folder,
        )
        self._start_context(loaded, corpus, context, fallback, seed)
        if expected is not None and expected != self.context_fingerprint:
            raise ContextMismatchError(
                f"context_fingerprint={expected!r} was given, but the context in use is "
                f"{self.context_fingerprint!r}. The fingerprint follows the context: pass "
                "context=<the saved context file> instead."
            )

    @classmethod
    def class_name(cls) -> str:
        return "CDEEmbedding"

    @field_validator("query_instruction", "text_instruction")
    @classmethod
    def _check_instruction(cls, value: str, info: ValidationInfo) -> str:
        expected = QUERY_PREFIX if info.field_name == "query_instruction" else DOCUMENT_PREFIX
        return check_fixed_prefix(str(info.field_name), value, expected)

    @field_validator("embeddings_cache")
    @classmethod
    def _no_text_keyed_cache(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "CDEEmbedding does not take embeddings_cache: it keys vectors by text alone, so "
                "after a new context it would return vectors of the old one. Use the engine's "
                "cache, keyed by context (embed_model.model.use_embedding_cache(path)), or an "
                "IngestionPipeline cache (its keys include context_fingerprint)."
            )
        return value

    # The context fingerprint is a public field here: it is part of IngestionCache keys, so
    # cached vectors of another context are never reused.
    context_fingerprint = computed_field(ContextMixin.context_fingerprint)  # type: ignore[assignment]

    @property
    def _batch_size(self) -> int:
        return self.embed_batch_size

    @property
    def _show_progress(self) -> bool | None:
        return self.show_progress_bar

    def _corpus_texts(self, corpus: object) -> list[str]:
        """Strings, Documents or nodes, nodes as the embedding step sees them (content plus
        embed metadata)."""
        return corpus_texts(corpus, BaseNode, _embedded_text, "strings, Documents or nodes")

    # -- embedding ---------------------------------------------------------------------------

    def _embed(self, texts: list[str], input_type: InputType) -> list[Embedding]:
        vectors = self._holder.embed(
            texts, input_type, batch_size=self._batch_size, show_progress=self._show_progress
        )
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([require_text(query)], "query")[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed(document_texts([text], _DROP_EMPTY), "document")[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(document_texts(texts, _DROP_EMPTY), "document")

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """As a pipeline step: embed the chunks, dropping those with nothing to embed."""
        return super().__call__(_with_text(nodes, "CDEEmbedding"), **kwargs)

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return await super().acall(_with_text(nodes, "CDEEmbedding"), **kwargs)

    # The base class would run async calls on the event loop, one text at a time; run whole
    # batches in a worker thread instead (the model is thread-safe).

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"CDEEmbedding {_NO_PROCESSES}")


class CDEContextFit(TransformComponent):
    """Fit `embed_model`'s context on all chunks, before the embedding step.

    Put it after the splitter and before the embed model. It fits only while the model has no
    context (or with `refit=True`), so incremental inserts keep the context the stored vectors
    were made with. Chunks with nothing to embed are dropped here, with an `EmptyTextWarning`,
    so they neither enter the context nor reach the vector store.

    With `context_path`, the context is saved there after fitting and restored from there by a
    new process, even when the IngestionCache skips this step.
    """

    embed_model: CDEEmbedding = Field(description="The embedding model whose context to fit.")
    context_path: str | None = Field(
        default=None, description="Where the pipeline's context is saved and restored from."
    )
    refit: bool = Field(default=False, description="Fit again on every run, replacing it.")
    seed: int = Field(default=DEFAULT_SEED, description="Seed for sampling the minicorpus.")

    def __init__(self, embed_model: CDEEmbedding, **kwargs: Any):
        super().__init__(embed_model=embed_model, **kwargs)
        if self.embed_model is not embed_model:
            raise TypeError("embed_model must be the CDEEmbedding instance itself.")
        self._restore()

    @classmethod
    def class_name(cls) -> str:
        return "CDEContextFit"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cache_key(self) -> str:
        """What IngestionCache keys this step on: a hit skips the call, so a hit is allowed only
        when the model already holds its context; otherwise the step must run to fit it."""
        fingerprint = self.embed_model.context_fingerprint
        if fingerprint is None or self.refit:
            return f"run-{uuid.uuid4().hex}"
        return f"keep-{fingerprint}"

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        nodes = _with_text(nodes, "CDEContextFit")
        if not nodes or (self.embed_model.is_fitted and not self.refit):
            return nodes
        saved = None if self.refit else self._saved()
        if saved is not None:  # saved after this step was created, e.g. by another pipeline
            self.embed_model.set_context(saved)
        else:
            self.embed_model.fit(nodes, seed=self.seed)
            if self.context_path is not None:
                self.embed_model.save_context(self.context_path)
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return await asyncio.to_thread(self.__call__, nodes, **kwargs)

    def _saved(self) -> Path | None:
        if self.context_path is None:
            return None
        path = Path(self.context_path).expanduser()
        return path if path.exists() else None

    def _restore(self) -> None:
        """Load the saved context into an unfitted model; refuse a model holding another one."""
        path = self._saved()
        if path is None:
            return
        if not self.embed_model.is_fitted:
            self.embed_model.set_context(path)
            return
        saved = CorpusContext.load(path)
        if not self.refit and saved != self.embed_model.context:
            raise ContextMismatchError(
                f"The embed model uses context {self.embed_model.context_fingerprint[:12]}, but "
                f"{self.context_path} holds {saved.fingerprint[:12]}, the one this pipeline's "
                "stored vectors were made with. Create the model with "
                f"context={self.context_path!r}, or pass refit=True to fit anew (then re-embed "
                "everything stored)."
            )

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"CDEContextFit {_NO_PROCESSES}")


def _embedded_text(node: BaseNode) -> str:
    return node.get_content(metadata_mode=MetadataMode.EMBED)


def _with_text(nodes: Sequence[BaseNode], step: str) -> list[BaseNode]:
    """The nodes with something to embed (text or embed metadata), as LlamaIndex's own
    VectorStoreIndex keeps them; the others are dropped with a warning naming their documents."""
    kept: list[BaseNode] = []
    empty: list[BaseNode] = []
    for node in nodes:
        (kept if _embedded_text(node).strip() else empty).append(node)
    if empty:
        documents = sorted({node.ref_doc_id or node.node_id for node in empty})
        warnings.warn(
            f"{step} dropped {len(empty)} of {len(nodes)} chunks that have no text, from "
            f"documents {shown(documents)}: an empty chunk has nothing to embed, and its vector "
            "would match unrelated queries. The other chunks are indexed as usual.",
            EmptyTextWarning,
            stacklevel=2,
        )
    return kept
