"""Is a collection's corpus context stale? Counts since the fit, and a drift score.

A context is fitted on the corpus as it was; documents added or removed since change what the
corpus looks like. `context_status` reports both sides:

- counts, from the collection's metadata (`tracking`): how many texts the context was fitted
  on, how many records the collection holds now, and how many were added and removed since;
- a drift score (`cde_rag.drift`, where the statistic is defined): how far a fresh sample of
  the records stored now lies from the context's minicorpus.

Cost: the first stage on at most `sample` stored texts, plus reading every record's id once to
draw the sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection

from ..drift import DEFAULT_SAMPLE, REFIT_THRESHOLD, measure_drift
from ..model import CDEModel
from ._compat import server_of
from .collection import get_context, get_model
from .records import in_batches
from .tracking import BASELINE_KEY, REMOVED_KEY, current_metadata


@dataclass(frozen=True)
class ContextStatus:
    """How a collection's context compares with the collection now (see the module doc).

    Counts are None for a collection made before cde-rag tracked them; `drift` is None when it
    was not computed (`sample=0`, or no stored text)."""

    collection: str
    context: str
    kind: str
    fitted_on: int | None
    records: int
    added: int | None
    removed: int | None
    drift: float | None
    sampled: int
    threshold: float = REFIT_THRESHOLD

    @property
    def refit_recommended(self) -> bool:
        return self.drift is not None and self.drift > self.threshold

    def advice(self) -> str:
        if self.drift is None:
            return "Drift not measured (no sample taken)."
        if self.refit_recommended:
            return (
                f"Drift {self.drift:.3f} is above {self.threshold}: re-fit the context with "
                f"cde_rag.chroma.rebuild_collection(client, {self.collection!r}), which fits it "
                "on the records stored now and re-embeds them, with no downtime."
            )
        return f"Drift {self.drift:.3f} is within {self.threshold}: the context still fits."

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, for UIs and `--json`."""
        return {
            **asdict(self),
            "refit_recommended": self.refit_recommended,
            "advice": self.advice(),
        }


def context_status(
    collection: Collection,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    model: CDEModel | None = None,
    show_progress: bool | None = None,
) -> ContextStatus:
    """Counts since the fit and the drift score of `collection` (see the module doc and
    `cde_rag.drift`).

    The drift is computed on at most `sample` stored records drawn with `seed` (0 skips it and
    loads no model), by the collection's model or `model` (the same model, e.g. on a GPU).
    """
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
        raise ValueError(f"sample must be a non-negative integer, got {sample!r}.")
    context = get_context(collection)
    meta = current_metadata(collection)
    records = collection.count()
    added = removed = None
    if BASELINE_KEY in meta:
        removed = int(meta.get(REMOVED_KEY) or 0)
        added = max(0, records - int(meta[BASELINE_KEY]) + removed)
    drift, sampled = None, 0
    texts = _sample_texts(collection, sample, seed) if sample else []
    if texts:
        model = model if model is not None else get_model(collection)
        drift = measure_drift(
            model, context, texts, population=records, show_progress=show_progress
        )
        sampled = len(texts)
    return ContextStatus(
        collection=collection.name,
        context=context.fingerprint,
        kind=context.kind,
        fitted_on=context.source_size,
        records=records,
        added=added,
        removed=removed,
        drift=drift,
        sampled=sampled,
    )


def _sample_texts(collection: Collection, size: int, seed: int) -> list[str]:
    """The texts of up to `size` stored records, drawn uniformly with `seed`."""
    ids: list[str] = []
    page = server_of(collection).get_max_batch_size()
    while True:
        got = collection.get(include=[], limit=page, offset=len(ids))
        if not got["ids"]:
            break
        ids += got["ids"]
    if not ids:
        return []
    rng = np.random.default_rng(seed)
    chosen = [ids[int(i)] for i in sorted(rng.choice(len(ids), min(size, len(ids)), replace=False))]
    texts: list[str] = []
    for batch in in_batches(chosen, page):
        got = collection.get(ids=list(batch), include=["documents"])  # type: ignore[list-item]
        texts += [text for text in got["documents"] or [] if text]
    return texts
