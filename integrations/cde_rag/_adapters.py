"""Framework-free core of the LangChain and LlamaIndex adapters: one model, one corpus context.

Both adapters need the same rules, so they live here once: a context is set explicitly (fitted
on the whole corpus, loaded, or the opt-in fallback) and never fitted lazily inside an embed
call, because frameworks hand documents over in slices and a lazy fit would see only the first.
`ContextHolder` keeps the model and context; `ContextMixin` is the context API both adapters
expose over it.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .context import DEFAULT_SEED, CorpusContext
from .errors import ContextError, InputError, NotFittedError
from .model import CDEModel, DTypeLike, InputType, check_texts, resolve_dtype, shared_model

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from typing_extensions import Self

DEFAULT_MODEL = "jxm/cde-small-v2"
ContextSource = CorpusContext | str | os.PathLike


class StaleVectorsWarning(UserWarning):
    """The context changed after documents were embedded: their stored vectors are now stale."""


class EmptyTextWarning(UserWarning):
    """A framework handed over empty texts: they were dropped, left out of a context, or
    embedded as the model embeds them, into a vector with no content."""


def load_model(
    model: str | os.PathLike | CDEModel,
    *,
    revision: str | None = None,
    device: str | None = None,
    dtype: DTypeLike = None,
    cache_folder: str | None = None,
    token: str | bool | None = None,
) -> CDEModel:
    """An already-loaded model as is, else the process-wide shared one, so adapters share weights.

    A custom cache folder or token needs its own load (the shared cache is keyed without them).
    """
    if isinstance(model, CDEModel):
        if device is not None and model.device != _torch_device(device):
            raise ValueError(
                f"device={device!r} was given, but the CDEModel passed in runs on {model.device}. "
                "device applies only when loading by name; load the model on that device instead."
            )
        if dtype is not None and model.dtype != resolve_dtype(dtype):
            raise ValueError(
                f"dtype={dtype!r} was given, but the CDEModel passed in uses {model.dtype}. "
                "dtype applies only when loading by name; load the model with that dtype instead."
            )
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "model must be a hub id, a checkpoint folder or a CDEModel, "
            f"not {type(model).__name__}."
        )
    if cache_folder is None and token is None:
        return shared_model(model, revision=revision, device=device, dtype=dtype)
    return CDEModel.from_pretrained(
        model, revision=revision, device=device, dtype=dtype, cache_dir=cache_folder, token=token
    )


def _torch_device(device: str):
    import torch

    return torch.device(device)


def require_text(text: object, what: str = "query") -> str:
    """One non-empty string, or an error saying what was passed instead."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}.")
    if not text.strip():
        raise InputError(f"{what} is empty; pass the text to embed.")
    return text


def document_texts(texts: object, remedy: str, what: str = "texts") -> list[str]:
    """Texts to embed as documents, one vector each: frameworks pair vectors with texts.

    An empty or whitespace-only text gets what the model gives it (for "", the vector of the
    document prefix alone), with an `EmptyTextWarning` that ends with `remedy`. Refusing it
    would abort a whole ingestion over one empty chunk, and a zero vector would break cosine
    stores; but such a vector carries no content and can match unrelated queries, hence the
    warning.
    """
    items = check_texts(texts, what)
    empty = [i for i, text in enumerate(items) if not text.strip()]
    if empty:
        warnings.warn(
            f"{len(empty)} of {len(items)} {what} are empty or whitespace only (positions "
            f"{shown(empty)}). They were embedded as the model embeds them, little more than the "
            "document prefix: such a vector carries no content and can match unrelated queries. "
            f"{remedy}",
            EmptyTextWarning,
            stacklevel=3,
        )
    return items


def shown(items: list, limit: int = 10) -> str:
    """The first `limit` items for a message, and how many more there are."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def _corpus_with_text(corpus: list[str]) -> list[str]:
    """The texts of `corpus` a context may be fitted on: all but the empty ones."""
    kept = [text for text in corpus if text.strip()]
    if len(kept) == len(corpus):
        return corpus
    if not kept:
        raise InputError(
            f"The corpus has no text to fit on: all its {len(corpus)} items are empty or "
            "whitespace only. Pass the documents you will index."
        )
    warnings.warn(
        f"{len(corpus) - len(kept)} of {len(corpus)} corpus texts are empty or whitespace only "
        "and were left out of the context (they say nothing about the corpus). The context is "
        f"fitted on the other {len(kept)}.",
        EmptyTextWarning,
        stacklevel=4,  # the caller of the adapter's fit()
    )
    return kept


class ContextHolder:
    """A model plus the one corpus context an adapter embeds with, safe to share across threads."""

    def __init__(self, model: CDEModel, owner: str):
        self.model = model
        self.owner = owner
        self._context: CorpusContext | None = None
        self._documents_embedded = False
        self._lock = threading.Lock()

    @property
    def context(self) -> CorpusContext | None:
        return self._context

    def set(self, source: ContextSource, *, stacklevel: int = 3) -> CorpusContext:
        """Use a context (or a saved context file); warn if it replaces one documents used.

        `stacklevel` points the warning at the user's call (3: the caller of the adapter
        method that called this one)."""
        if isinstance(source, (str, os.PathLike)):
            context = CorpusContext.load(source)
        elif isinstance(source, CorpusContext):
            context = source
        else:
            raise ContextError(
                f"context must be a CorpusContext or the path of a saved context, "
                f"not {type(source).__name__}."
            )
        self.model.check_context(context)
        with self._lock:
            old, used = self._context, self._documents_embedded
            self._context = context
            if old != context:
                self._documents_embedded = False
        if used and old is not None and old != context:
            warnings.warn(
                f"{self.owner}: the corpus context changed from {old.fingerprint[:12]} to "
                f"{context.fingerprint[:12]} after documents were embedded with the old one. "
                "Vectors already stored are stale: re-embed them with the new context (or go "
                "back to the old context) before querying.",
                StaleVectorsWarning,
                stacklevel=stacklevel,
            )
        return context

    def fit(
        self,
        corpus: Iterable[str],
        seed: int = DEFAULT_SEED,
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> CorpusContext:
        """Fit on the whole corpus (sampling the model's N documents) and use the result.

        Empty texts are left out, with a warning: they say nothing about the corpus, and each
        would take one of the context's N slots."""
        texts = _corpus_with_text(check_texts(corpus, "corpus"))
        context = self.model.fit_context(
            texts, seed=seed, batch_size=batch_size, show_progress=show_progress
        )
        return self.set(context, stacklevel=4)

    def use_fallback(
        self, *, batch_size: int | None = None, show_progress: bool | None = None
    ) -> CorpusContext:
        context = self.model.fallback_context(batch_size=batch_size, show_progress=show_progress)
        return self.set(context, stacklevel=4)

    def require(self) -> CorpusContext:
        context = self._context
        if context is None:
            raise NotFittedError(
                f"{self.owner} has no corpus context yet, so it cannot embed. It never fits one "
                "on the texts of an embed call, because vector stores pass documents in slices "
                "and the context must come from the whole corpus. Do one of: pass corpus=<all "
                "your documents> when creating it, call .fit(corpus), pass context=<CorpusContext "
                "or saved context path>, or opt in to the no-corpus fallback explicitly with "
                ".use_fallback_context() (or fallback=True)."
            )
        return context

    def embed(
        self,
        texts: list[str],
        input_type: InputType,
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed with the context current at the call's start, whatever happens meanwhile."""
        context = self.require()
        if input_type == "document" and texts:
            with self._lock:
                if self._context is context:
                    self._documents_embedded = True
        return self.model.embed(
            texts,
            context=context,
            input_type=input_type,
            batch_size=batch_size,
            show_progress=show_progress,
        )

    def save(self, path: str | os.PathLike) -> Path:
        return self.require().save(path)


class ContextMixin:
    """The corpus-context API of an adapter, over its `ContextHolder` (`self._holder`).

    An adapter provides `_corpus_texts` (what its documents embed as) and the `_batch_size` and
    `_show_progress` it embeds with, and calls `_start_context` from its constructor.
    """

    if TYPE_CHECKING:
        _holder: ContextHolder
        _batch_size: int
        _show_progress: bool | None

        def _corpus_texts(self, corpus: object) -> list[str]: ...

    def _start_context(
        self,
        model: CDEModel,
        corpus: Iterable[Any] | None,
        context: ContextSource | None,
        fallback: bool,
        seed: int,
    ) -> None:
        """Hold `model`, with the one context asked for at construction (if any)."""
        if sum(x is not None for x in (corpus, context)) + bool(fallback) > 1:
            raise ValueError("Pass only one of corpus=, context= and fallback=True.")
        self._holder = ContextHolder(model, type(self).__name__)
        if corpus is not None:
            self.fit(corpus, seed=seed)
        elif context is not None:
            self.set_context(context)
        elif fallback:
            self.use_fallback_context()

    @classmethod
    def from_chroma(cls, collection: Collection, **kwargs: Any) -> Self:
        """Embeddings with the model and context stored with a cde-rag Chroma collection, so
        what the framework adds to or asks of that collection agrees with its stored vectors
        (`langchain_chroma.Chroma(client=..., collection_name=...)`,
        `ChromaVectorStore(chroma_collection=collection)`)."""
        from .chroma import get_context, get_model

        return cls(model=get_model(collection), context=get_context(collection), **kwargs)

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
        """The fingerprint of the context in use (None before one is set)."""
        context = self._holder.context
        return context.fingerprint if context is not None else None

    def fit(self, corpus: Iterable[Any], seed: int = DEFAULT_SEED) -> Self:
        """Fit the context on the whole corpus, replacing any other.

        Items are strings or the framework's documents, counted with the text the embedding
        step sees."""
        self._holder.fit(
            self._corpus_texts(corpus),
            seed=seed,
            batch_size=self._batch_size,
            show_progress=self._show_progress,
        )
        return self

    def set_context(self, context: ContextSource) -> Self:
        """Use a `CorpusContext`, or load one saved with `save_context`."""
        self._holder.set(context)
        return self

    def use_fallback_context(self) -> Self:
        """Opt in to the model card's no-corpus fallback (random strings); weaker than a fit."""
        self._holder.use_fallback(batch_size=self._batch_size, show_progress=self._show_progress)
        return self

    def save_context(self, path: str | os.PathLike) -> Path:
        """Save the context next to the vectors it produced, to reload it with `context=path`."""
        return self._holder.save(path)


def corpus_texts(
    corpus: object, document_type: type, text_of: Callable[[Any], str], kinds: str
) -> list[str]:
    """The texts of a corpus of strings and framework documents (`text_of` reads one)."""
    if corpus is None or isinstance(corpus, (str, bytes, document_type)):
        shown = "None" if corpus is None else f"one {type(corpus).__name__}"
        raise InputError(f"corpus must be a list of {kinds}, not {shown}.")
    if not isinstance(corpus, Iterable):
        raise InputError(f"corpus must be a list of {kinds}, got {type(corpus).__name__}.")
    return [text_of(item) if isinstance(item, document_type) else item for item in corpus]


def check_fixed_prefix(field: str, value: str, expected: str) -> str:
    """Refuse another prefix: cde-small-v2 was trained with one, and the engine adds it."""
    if value != expected:
        raise ValueError(
            f"{field} is fixed to {expected!r}: cde-small-v2 was trained with it and the engine "
            "adds it to every text. Leave it at its default (texts are embedded without any "
            "other prefix)."
        )
    return value
