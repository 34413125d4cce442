"""The corpus context: the dataset embeddings every query and document is conditioned on.

A context is fitted once, identified by a fingerprint, saved next to the vectors it produced,
and reloaded later, so documents and queries are always embedded against the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._files import write_atomic
from .errors import ContextError

ContextKind = Literal["fitted", "explicit", "fallback", "embeddings"]
# What each kind means, in words (repr, describe); any other kind is refused.
KINDS: dict[str, str] = {
    "fitted": "fitted with seed {seed} on {source_size} documents",
    "explicit": "from an explicit minicorpus",
    "fallback": "random-strings fallback (no corpus)",
    "embeddings": "from given dataset embeddings",
}
FORMAT = "cde-rag-context"
# Version 2 adds the recipe fingerprint, the numbers' checksum and a checksum per provenance
# field. Version 1 files are still read: their numbers are verified (their "fingerprint" is
# today's checksum), their provenance cannot be, and a LegacyContextWarning says so.
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", FORMAT_VERSION)
# The provenance a saved context carries, each field under its own checksum in the file.
PROVENANCE = (
    "model_name",
    "model_fingerprint",
    "model_revision",
    "backbone_revision",
    "kind",
    "minicorpus",
    "seed",
    "source_size",
    "created_at",
    "fit_dtype",
)
_RECIPE_DOMAIN = "cde-rag-context-recipe/2"
# The checksum is computed exactly as cde-rag's format 1 computed its "fingerprint", so every
# record made then (Chroma configs, cache namespaces) still names the same numbers.
_CHECKSUM_DOMAIN = "cde-rag-context/1"
DEFAULT_SEED = 42
# First-stage rows are means of layer-normed hidden states, with norms on the order of
# sqrt(dim). The second stage layer-normalises them again, squaring each value: rows far
# beyond this bound overflow float32 (and lose all precision in bf16) and come out as NaN.
MAX_ROW_NORM = 1e4


class LegacyContextWarning(UserWarning):
    """A context file of format 1: its numbers are verified, its provenance cannot be."""


def sample_minicorpus(corpus: Sequence[str], size: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Exactly `size` documents, by the rule the MTEB harness uses for CDE.

    Equivalent to `default_rng(seed).choice(corpus, size, replace=len(corpus) < size)`, but
    indexes the list instead of converting it to a numpy string array (which would strip
    trailing NULs and copy every text).
    """
    return [corpus[i] for i in sample_positions(len(corpus), size, seed)]


def sample_positions(length: int, size: int, seed: int = DEFAULT_SEED) -> list[int]:
    """The positions `sample_minicorpus` picks from a corpus of `length` documents, in order."""
    if length == 0:
        raise ContextError(
            "Cannot fit a corpus context on an empty corpus: pass the documents you will index "
            "(any number; fewer than the model's corpus size are sampled with replacement)."
        )
    rng = np.random.default_rng(seed)
    return rng.choice(length, size=size, replace=length < size).tolist()


@dataclass(frozen=True)
class StreamedCorpus:
    """A corpus too large to hold at once, for `CDEModel.fit_context`: its length, and `read`,
    which gives the texts at the positions asked for, in that order. The fit reads only the N
    it samples, so the context equals a fit on the whole list (streaming ingestion)."""

    length: int
    read: Callable[[list[int]], Sequence[str]]


def model_mismatch_message(ctx_model: str, ctx_fp: str, model: str, model_fp: str) -> str:
    return (
        f"This corpus context was made by model {ctx_model!r} (fingerprint {ctx_fp[:12]}), "
        f"but it is being used with model {model!r} (fingerprint {model_fp[:12]}). Contexts "
        "only work with the model that made them: fit a new one with this model "
        "(model.fit_context(corpus)) and re-embed the stored documents."
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def checked_rows(embeddings: object) -> np.ndarray:
    """Dataset embeddings as a read-only float32 (N, dim) copy, refusing values that would make
    NaN vectors inside the model (non-finite, or finite but far beyond any first-stage row)."""
    rows = np.array(embeddings, dtype=np.float32, copy=True)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ContextError(
            f"Context embeddings must be a non-empty (N, dim) matrix, not {rows.shape}."
        )
    if not np.isfinite(rows).all():
        row = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise ContextError(
            f"Context embeddings contain NaN or infinite values (row {row}). Pass the first "
            "stage's output unchanged (model.fit_context or ctx.embeddings), or fit the context "
            "again."
        )
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    if norms.max() > MAX_ROW_NORM:
        row = int(norms.argmax())
        raise ContextError(
            f"Context embeddings row {row} has norm {norms[row]:.3g}, beyond the "
            f"{MAX_ROW_NORM:g} that first-stage embeddings stay far below; such values "
            "overflow inside the model and give NaN vectors. Pass the first stage's output "
            "unchanged (model.fit_context or ctx.embeddings), or fit the context again."
        )
    rows.setflags(write=False)
    return rows


def numbers_checksum(model_fingerprint: str, rows: np.ndarray) -> str:
    """The exact float32 numbers of a context, and the model they belong to."""
    digest = hashlib.sha256(f"{_CHECKSUM_DOMAIN}\n{model_fingerprint}\n".encode())
    digest.update(f"{rows.shape}\n".encode())
    digest.update(np.ascontiguousarray(rows, dtype="<f4").tobytes())
    return digest.hexdigest()[:32]


def _field_checksum(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _optional(value: object, kind: type, name: str) -> None:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ContextError(f"Context {name} must be {kind.__name__} or None, got {value!r}.")


@dataclass(frozen=True, eq=False)
class CorpusContext:
    """Dataset embeddings plus a record of the model and documents that produced them.

    Two names tell contexts apart. `fingerprint` is the identity: the recipe (the model's
    fingerprint and the minicorpus texts in order; for a context made from given embeddings,
    the numbers themselves), so the same recipe has the same fingerprint whatever the batch
    size, device or dtype of the fit. `checksum` covers the exact numbers: two fits of one
    recipe in float32 and bfloat16 share a fingerprint but not a checksum, and contexts are
    equal (`==`) only when their checksums are.
    """

    embeddings: np.ndarray
    model_name: str
    model_fingerprint: str
    kind: ContextKind
    minicorpus: tuple[str, ...] | None = None
    seed: int | None = None
    source_size: int | None = None
    created_at: str = field(default_factory=_now)
    model_revision: str | None = None
    backbone_revision: str | None = None
    fit_dtype: str | None = None

    def __post_init__(self) -> None:
        rows = checked_rows(self.embeddings)
        object.__setattr__(self, "embeddings", rows)
        if self.kind not in KINDS:
            raise ContextError(
                f"Unknown context kind {self.kind!r}; cde-rag knows {', '.join(KINDS)}. A "
                "context of another kind was written by a newer cde-rag (upgrade) or edited by "
                "hand (fit it again)."
            )
        for name in ("model_name", "model_fingerprint", "created_at"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ContextError(f"Context {name} must be a non-empty string.")
        _optional(self.seed, int, "seed")
        _optional(self.source_size, int, "source_size")
        for name in ("model_revision", "backbone_revision", "fit_dtype"):
            _optional(getattr(self, name), str, name)
        if self.minicorpus is not None:
            texts = tuple(self.minicorpus)
            if len(texts) != rows.shape[0] or not all(isinstance(t, str) for t in texts):
                raise ContextError(
                    f"The minicorpus must hold one text per context row ({rows.shape[0]}), "
                    f"got {len(texts)} items."
                )
            object.__setattr__(self, "minicorpus", texts)

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @cached_property
    def fingerprint(self) -> str:
        """The identity: same model and same minicorpus (in order) give the same fingerprint in
        any process, on any machine, whatever the batch size, device or dtype of the fit."""
        digest = hashlib.sha256(f"{_RECIPE_DOMAIN}\n{self.model_fingerprint}\n".encode())
        if self.minicorpus is None:
            digest.update(f"numbers {self.embeddings.shape}\n".encode())
            digest.update(np.ascontiguousarray(self.embeddings, dtype="<f4").tobytes())
        else:
            digest.update(f"texts {len(self.minicorpus)}\n".encode())
            for text in self.minicorpus:
                data = text.encode("utf-8", "surrogatepass")
                digest.update(f"{len(data)}:".encode())
                digest.update(data)
        return digest.hexdigest()[:32]

    @cached_property
    def checksum(self) -> str:
        """The exact numbers (and model): what vectors embedded with this context depend on."""
        return numbers_checksum(self.model_fingerprint, self.embeddings)

    def matches(self, fingerprint: str | None, checksum: str | None = None) -> bool:
        """Whether a record kept with stored vectors names this context: its `fingerprint` (and
        `checksum`, when recorded). A record written by cde-rag's context format 1 holds the
        numbers' checksum as its fingerprint, and matches too."""
        if fingerprint == self.checksum:
            return True
        return fingerprint == self.fingerprint and checksum in (None, self.checksum)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CorpusContext) and other.checksum == self.checksum

    def __hash__(self) -> int:
        return hash(self.checksum)

    def __repr__(self) -> str:
        how = KINDS[self.kind].format(seed=self.seed, source_size=self.source_size)
        return (
            f"CorpusContext({self.fingerprint[:12]}, {self.size}x{self.dim}, {how}, "
            f"model={self.model_name!r})"
        )

    def describe(self, sample: int = 5) -> dict[str, Any]:
        """A JSON-friendly summary of what the context saw, for UIs and logs."""
        return {
            "fingerprint": self.fingerprint,
            "checksum": self.checksum,
            "kind": self.kind,
            "model": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "model_revision": self.model_revision,
            "backbone_revision": self.backbone_revision,
            "size": self.size,
            "dim": self.dim,
            "seed": self.seed,
            "source_size": self.source_size,
            "fit_dtype": self.fit_dtype,
            "unique_documents": len(set(self.minicorpus)) if self.minicorpus else None,
            "sample": list(self.minicorpus[:sample]) if self.minicorpus else [],
            "created_at": self.created_at,
        }

    # -- persistence -------------------------------------------------------------------------

    def _provenance(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in PROVENANCE}
        if self.minicorpus is not None:
            values["minicorpus"] = list(self.minicorpus)
        return values

    def to_bytes(self) -> bytes:
        """The context as one safetensors blob: the matrix plus JSON metadata (no pickle).

        Each provenance field is saved with its own checksum, so a hand edit is caught on load
        and named."""
        from safetensors.numpy import save

        provenance = self._provenance()
        record = {
            "fingerprint": self.fingerprint,
            "checksum": self.checksum,
            **provenance,
            "field_checksums": {name: _field_checksum(v) for name, v in provenance.items()},
        }
        return save(
            {"embeddings": np.ascontiguousarray(self.embeddings)},
            metadata={"format": FORMAT, "version": FORMAT_VERSION, "context": json.dumps(record)},
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "context") -> CorpusContext:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        remedy = (
            "Nothing was changed; restore the file from a backup, or fit the context again and "
            "re-embed the documents that used it."
        )
        try:
            tensors = load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            meta = header.get("__metadata__") or {}
        except (SafetensorError, ValueError, KeyError, OSError) as exc:
            raise ContextError(
                f"{source} is not a readable cde-rag context (torn or corrupted file: {exc}). "
                f"{remedy}"
            ) from exc
        if meta.get("format") != FORMAT or "embeddings" not in tensors:
            raise ContextError(f"{source} is a safetensors file, but not a cde-rag context.")
        version = meta.get("version")
        if version not in READABLE_VERSIONS:
            raise ContextError(
                f"{source} uses context format {version!r}; this cde-rag reads versions "
                f"{', '.join(READABLE_VERSIONS)}. Upgrade cde-rag."
            )
        try:
            info = json.loads(meta["context"])
            if not isinstance(info, dict):
                raise TypeError("the context record is not a JSON object")
            rows = checked_rows(tensors["embeddings"])
        except ContextError as exc:  # the rows themselves are refused
            raise ContextError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ContextError(f"{source} has malformed context metadata ({exc}).") from exc
        if version == FORMAT_VERSION:
            changed = _changed_fields(info, rows)
            if changed:
                raise ContextError(
                    f"{source} is corrupted or was edited after it was saved: the checksum of "
                    f"{', '.join(changed)} no longer matches. {remedy}"
                )
        try:
            ctx = cls(
                embeddings=rows,
                **{name: info.get(name) for name in PROVENANCE if name in info},
            )
        except ContextError as exc:
            raise ContextError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ContextError(f"{source} has malformed context metadata ({exc}).") from exc
        if version == FORMAT_VERSION and ctx.fingerprint != info.get("fingerprint"):
            raise ContextError(
                f"{source} is corrupted or was edited after it was saved: its fingerprint no "
                f"longer matches its model and minicorpus. {remedy}"
            )
        if version == "1":
            if ctx.checksum != info.get("fingerprint"):
                raise ContextError(
                    f"{source} is corrupted: its embeddings do not match the fingerprint "
                    f"recorded when it was saved ({info.get('fingerprint')}). {remedy}"
                )
            warnings.warn(
                f"{source} is a context file of format 1: its numbers are verified, but its "
                "provenance (minicorpus, seed, kind, source size, creation time) carries no "
                "checksum. Save it again (CorpusContext.load(path).save(path)) to protect it.",
                LegacyContextWarning,
                stacklevel=3,
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


def _changed_fields(info: dict[str, Any], rows: np.ndarray) -> list[str]:
    """The provenance fields (and `embeddings`) of a format-2 record that no longer match the
    checksums saved with them."""
    saved = info.get("field_checksums")
    if not isinstance(saved, dict):
        return ["field_checksums"]
    changed = [name for name in PROVENANCE if saved.get(name) != _field_checksum(info.get(name))]
    model = info.get("model_fingerprint")
    # An edited model fingerprint also changes the numbers' checksum: name the cause only.
    unchanged_model = "model_fingerprint" not in changed and isinstance(model, str)
    if unchanged_model and numbers_checksum(model, rows) != info.get("checksum"):
        changed.append("embeddings")
    return changed
