"""How far a corpus has drifted from the context fitted on it: one score, with a scale.

A corpus context is the first-stage embeddings of a minicorpus sampled from the corpus as it was.
The drift score compares a fresh sample of the corpus as it is now with those rows: it is the
squared distance between the mean first-stage embedding of the sample and the mean of the
context's rows, with the sampling noise of both means taken out, divided by the context's spread
(the mean squared distance of its rows to their mean):

    drift = max(0, |mean(sample) - mean(context)|^2
                   - var(sample) / S * (1 - S / P)
                   - var(context) / N * (1 - N / M)) / spread(context)

for S texts sampled without replacement out of the P there are now, and N context rows sampled
from the M texts the context was fitted on (var is the total variance, the sum over
dimensions; the last term is 0 for a context not sampled from a corpus, and the N / M correction
is 0 when the rows were drawn with replacement, from fewer than N texts).

The numerator is the unbiased estimate of the squared distance between the two means (the
linear-kernel maximum mean discrepancy), so an unchanged corpus scores about 0 whatever the sample
size, and the score is in units of the context's own spread: 1 means the centre of the corpus
moved as far as a typical minicorpus document lies from that centre. Documents on new topics move
the centre; a corpus that keeps its centre but only grows or shrinks in spread scores low.

`REFIT_THRESHOLD` (0.1: the centre moved by about a third of the typical spread, e.g. a third of
the corpus replaced by documents on a new topic as far from the old ones as they are from each
other) is a heuristic: check it on your own data with `cde-rag eval` (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .context import CorpusContext
    from .model import CDEModel

# Texts whose first-stage embeddings the drift score is computed on, by default.
DEFAULT_SAMPLE = 128
# Above this drift, a re-fit is recommended (a heuristic; see the module doc).
REFIT_THRESHOLD = 0.1


def drift_score(context: CorpusContext, sample: np.ndarray, *, population: int) -> float:
    """The drift (module doc) of first-stage embeddings `sample`, drawn without replacement
    from `population` texts, from `context`."""
    rows = context.embeddings.astype(np.float64)
    drawn = np.asarray(sample, dtype=np.float64)
    if drawn.ndim != 2 or drawn.shape[1] != rows.shape[1] or len(drawn) == 0:
        raise ValueError(
            f"sample must be first-stage embeddings of shape (S, {rows.shape[1]}) with S >= 1, "
            f"got {drawn.shape}."
        )
    centre = rows.mean(axis=0)
    spread = float(((rows - centre) ** 2).sum(axis=1).mean())
    shift = float(((drawn.mean(axis=0) - centre) ** 2).sum())
    noise = 0.0
    if len(drawn) > 1:
        noise += _variance(drawn) / len(drawn) * max(0.0, 1 - len(drawn) / max(population, 1))
    if context.kind == "fitted" and context.source_size:
        drawn_without_replacement = context.source_size >= context.size
        correction = 1 - context.size / context.source_size if drawn_without_replacement else 1
        noise += _variance(rows) / context.size * correction
    return max(0.0, shift - noise) / spread if spread > 0 else 0.0


def measure_drift(
    model: CDEModel,
    context: CorpusContext,
    texts: Sequence[str],
    *,
    population: int,
    show_progress: bool | None = None,
) -> float:
    """The drift of `texts` (a sample of `population` texts) from `context`: costs the first
    stage of `model` on those texts."""
    model.check_context(context)
    rows = model._dataset_embeddings(list(texts), None, show_progress)
    return drift_score(context, rows, population=population)


def _variance(rows: np.ndarray) -> float:
    """Total variance (the sum over dimensions), unbiased."""
    return float(rows.var(axis=0, ddof=1).sum())
