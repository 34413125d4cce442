"""Embeddings through a persistent cache, without touching the model.

A model is often shared by the whole process (`shared_model`). Pointing its own embedding
cache at a run's file for the length of that run would make every other user of the model
write into that file, or lose their own cache, meanwhile. `CachedEmbedder` wraps the model
instead, as LangChain's `CacheBackedEmbeddings` wraps an embedder: the run looks vectors up in
its cache and stores the ones it computes; the model is never modified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .cache import EmbeddingCache

if TYPE_CHECKING:
    from .context import CorpusContext
    from .model import CDEModel, InputType


class CachedEmbedder:
    """`model`'s embeddings, read from and written to `cache`.

    Keys are those of the model's own cache (`CDEModel.embed`), so one file serves both: the
    context's checksum (its exact numbers, not the recipe fingerprint: a float32 and a bfloat16
    fit of one minicorpus give different vectors), the compute dtype, input type and text."""

    def __init__(self, model: CDEModel, cache: EmbeddingCache | str | os.PathLike[str]):
        self.model = model
        self.cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)

    def embed(
        self,
        texts: Sequence[str],
        *,
        context: CorpusContext | None,
        input_type: InputType = "document",
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """As `CDEModel.embed`; only texts the cache lacks are computed (each once)."""
        from .model import check_texts

        texts = check_texts(texts)
        context = self.model.check_context(context)
        dtype = str(self.model.dtype).removeprefix("torch.")
        namespace = f"{context.checksum}/{dtype}"
        keys = [self.cache.key(namespace, input_type, text) for text in texts]
        found = self.cache.get_many(keys, self.model.dim)
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in found))
        if missing:
            compute = (
                self.model.embed_queries if input_type == "query" else self.model.embed_documents
            )
            vectors = compute(
                missing, context=context, batch_size=batch_size, show_progress=show_progress
            )
            computed = {
                self.cache.key(namespace, input_type, t): v
                for t, v in zip(missing, vectors, strict=True)
            }
            self.cache.put_many(computed.items())
            found.update(computed)
        out = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            out[i] = found[key]
        return out

    def embed_documents(
        self, texts: Sequence[str], *, context: CorpusContext | None, **kwargs
    ) -> np.ndarray:
        return self.embed(texts, context=context, input_type="document", **kwargs)

    def embed_queries(
        self, texts: Sequence[str], *, context: CorpusContext | None, **kwargs
    ) -> np.ndarray:
        return self.embed(texts, context=context, input_type="query", **kwargs)

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> CachedEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
