"""The corpus context: the dataset embeddings every query and document is conditioned on.

A context is fitted once, identified by a fingerprint, saved next to the vectors it produced,
and reloaded later, so documents and queries are always embedded against the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._files import write_atomic
from .errors import ContextError

ContextKind = Literal["fitted", "explicit", "fallback", "embeddings"]
FORMAT = "cde-rag-context"
FORMAT_VERSION = "1"
DEFAULT_SEED = 42
# First-stage rows are means of layer-normed hidden states, with norms on the order of
# sqrt(dim). The second stage layer-normalises them again, squaring each value: rows far
# beyond this bound overflow float32 (and lose all precision in bf16) and come out as NaN.
MAX_ROW_NORM = 1e4


def sample_minicorpus(corpus: Sequence[str], size: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Exactly `size` documents, by the rule the MTEB harness uses for CDE.

    Equivalent to `default_rng(seed).choice(corpus, size, replace=len(corpus) < size)`, but
    indexes the list instead of converting it to a numpy string array (which would strip
    trailing NULs and copy every text).
    """
    if len(corpus) == 0:
        raise ContextError(
            "Cannot fit a corpus context on an empty corpus: pass the documents you will index "
            "(any number; fewer than the model's corpus size are sampled with replacement)."
        )
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(corpus), size=size, replace=len(corpus) < size)
    return [corpus[int(i)] for i in picks]


def model_mismatch_message(ctx_model: str, ctx_fp: str, model: str, model_fp: str) -> str:
    return (
        f"This corpus context was made by model {ctx_model!r} (fingerprint {ctx_fp[:12]}), "
        f"but it is being used with model {model!r} (fingerprint {model_fp[:12]}). Contexts "
        "only work with the model that made them: fit a new one with this model "
        "(model.fit_context(corpus)) and re-embed the stored documents."
    )


@dataclass(frozen=True, eq=False)
class CorpusContext:
    """Dataset embeddings plus a record of the model and documents that produced them."""

    embeddings: np.ndarray
    model_name: str
    model_fingerprint: str
    kind: ContextKind
    minicorpus: tuple[str, ...] | None = None
    seed: int | None = None
    source_size: int | None = None
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def __post_init__(self) -> None:
        embeddings = np.array(self.embeddings, dtype=np.float32, copy=True)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ContextError(
                f"Context embeddings must be a non-empty (N, dim) matrix, not {embeddings.shape}."
            )
        if not np.isfinite(embeddings).all():
            raise ContextError("Context embeddings contain NaN or infinite values.")
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
        if norms.max() > MAX_ROW_NORM:
            row = int(norms.argmax())
            raise ContextError(
                f"Context embeddings row {row} has norm {norms[row]:.3g}, beyond the "
                f"{MAX_ROW_NORM:g} that first-stage embeddings stay far below; such values "
                "overflow inside the model and give NaN vectors. Pass the first stage's output "
                "unchanged "
                "(model.fit_context or ctx.embeddings), or fit the context again."
            )
        embeddings.setflags(write=False)
        object.__setattr__(self, "embeddings", embeddings)
        if self.minicorpus is not None:
            object.__setattr__(self, "minicorpus", tuple(self.minicorpus))

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @cached_property
    def fingerprint(self) -> str:
        """Same model and same embeddings give the same fingerprint, in any process."""
        digest = hashlib.sha256()
        digest.update(f"{FORMAT}/{FORMAT_VERSION}\n{self.model_fingerprint}\n".encode())
        digest.update(f"{self.embeddings.shape}\n".encode())
        digest.update(np.ascontiguousarray(self.embeddings, dtype="<f4").tobytes())
        return digest.hexdigest()[:32]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CorpusContext) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        how = {
            "fitted": f"fitted with seed {self.seed} on {self.source_size} documents",
            "explicit": "from an explicit minicorpus",
            "fallback": "random-strings fallback (no corpus)",
            "embeddings": "from given dataset embeddings",
        }[self.kind]
        return (
            f"CorpusContext({self.fingerprint[:12]}, {self.size}x{self.dim}, {how}, "
            f"model={self.model_name!r})"
        )

    def describe(self, sample: int = 5) -> dict[str, Any]:
        """A JSON-friendly summary of what the context saw, for UIs and logs."""
        return {
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "model": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "size": self.size,
            "dim": self.dim,
            "seed": self.seed,
            "source_size": self.source_size,
            "unique_documents": len(set(self.minicorpus)) if self.minicorpus else None,
            "sample": list(self.minicorpus[:sample]) if self.minicorpus else [],
            "created_at": self.created_at,
        }

    # -- persistence -------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "kind": self.kind,
            "minicorpus": list(self.minicorpus) if self.minicorpus is not None else None,
            "seed": self.seed,
            "source_size": self.source_size,
            "created_at": self.created_at,
        }

    def to_bytes(self) -> bytes:
        """The context as one safetensors blob: the matrix plus JSON metadata (no pickle)."""
        from safetensors.numpy import save

        return save(
            {"embeddings": np.ascontiguousarray(self.embeddings)},
            metadata={
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "context": json.dumps(self._metadata()),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "context") -> CorpusContext:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            tensors = load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            meta = header.get("__metadata__") or {}
        except (SafetensorError, ValueError, KeyError, OSError) as exc:
            raise ContextError(
                f"{source} is not a readable cde-rag context (torn or corrupted file: {exc}). "
                "Nothing was changed; restore it from a backup or fit the context again "
                "and re-embed the documents that used it."
            ) from exc
        if meta.get("format") != FORMAT or "embeddings" not in tensors:
            raise ContextError(f"{source} is a safetensors file, but not a cde-rag context.")
        if meta.get("version") != FORMAT_VERSION:
            raise ContextError(
                f"{source} uses context format {meta.get('version')!r}; this cde-rag reads "
                f"version {FORMAT_VERSION}. Upgrade cde-rag."
            )
        try:
            info = json.loads(meta["context"])
            ctx = cls(
                embeddings=tensors["embeddings"],
                model_name=info["model_name"],
                model_fingerprint=info["model_fingerprint"],
                kind=info["kind"],
                minicorpus=info.get("minicorpus"),
                seed=info.get("seed"),
                source_size=info.get("source_size"),
                created_at=info["created_at"],
            )
        except ContextError as exc:  # the rows themselves are refused
            raise ContextError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ContextError(f"{source} has malformed context metadata ({exc}).") from exc
        if ctx.fingerprint != info.get("fingerprint"):
            raise ContextError(
                f"{source} is corrupted: its embeddings do not match the fingerprint recorded "
                f"when it was saved ({info.get('fingerprint')}). Nothing was changed; restore it "
                "or fit the context again and re-embed."
            )
        return ctx

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: readers see the old file or the new one, never half of one."""
        return write_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CorpusContext:
        source = Path(path).expanduser()
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise ContextError(
                f"No context file at {source}. Save one with ctx.save(path) or fit a new one "
                "with model.fit_context(corpus)."
            ) from None
        except IsADirectoryError:
            raise ContextError(
                f"{source} is a folder; pass the context file saved by ctx.save()."
            ) from None
        return cls.from_bytes(data, source=str(source))
