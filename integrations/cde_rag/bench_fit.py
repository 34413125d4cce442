"""Fit time by corpus size: a corpus smaller than N is sampled with replacement, and the first
stage runs once per distinct text; measured beside a fit of N distinct texts and beside the
way cde-rag fitted before (the first stage over every one of the N sampled entries).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

# Corpus sizes (chunks) measured for cde-small-v2's N = 512: a few uploaded files, a folder, and
# a corpus larger than N. Models with another N measure the same fractions of it.
CORPUS_CHUNKS = (40, 200, 5000)
REFERENCE_N = 512


def corpus_sizes(n: int) -> list[int]:
    """`CORPUS_CHUNKS` scaled to a model whose corpus size is `n`."""
    return [max(1, size * n // REFERENCE_N) for size in CORPUS_CHUNKS]


def every_entry(
    model, texts: Sequence[str], batch_size: int | None
) -> tuple[float, float, np.ndarray]:
    """The first stage over every entry of `texts`, duplicates included: what a fit did before
    it ran once per distinct text, and the reference its context must equal. Returns the
    seconds to load the stage, the seconds of its forward passes, and the rows."""
    import torch

    from .model import _release_memory
    from .tokenization import DOCUMENT_PREFIX

    token_ids = model.encoder.encode(list(texts), DOCUMENT_PREFIX)
    start = time.perf_counter()
    stage = model._load_first_stage()
    load = time.perf_counter() - start
    out = np.zeros((len(texts), model._first_config.hidden_size), np.float32)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in model._batches(token_ids, batch_size, False, "Fitting context"):
            out[batch.indices] = (
                stage(batch.input_ids.to(model.device), batch.lengths).float().cpu()
            )
    forward = time.perf_counter() - start
    del stage
    _release_memory()
    return load, forward, out


def fit_times(
    model, sizes: Sequence[int], tokens: int, batch_size: int | None = None
) -> dict[str, Any]:
    """Time `model.fit_context` on corpora of `sizes` distinct chunks of about `tokens` tokens;
    for the smallest, if below N, also the first stage over all N sampled entries as cde-rag
    did before (the same work for every corpus below N, so measured once)."""
    from .bench import texts_of_lengths

    base = texts_of_lengths(model, [max(tokens - 4, 1)] * 16)
    rows = []
    for size in sizes:
        corpus = [f"{i}: {base[i % len(base)]}" for i in range(size)]
        start, cpu = time.perf_counter(), time.process_time()
        context = model.fit_context(corpus, batch_size=batch_size, show_progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        sampled = list(context.minicorpus or ())
        row: dict[str, Any] = {
            "chunks": size,
            "distinct": len(set(sampled)),
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3),
        }
        if size == min(sizes) and row["distinct"] < len(sampled):
            load, forward, reference = every_entry(model, sampled, batch_size)
            row["every_entry_seconds"] = round(load + forward, 3)
            row["speedup_vs_every_entry"] = round((load + forward) / seconds, 2)
            row["max_abs_vs_every_entry"] = float(np.abs(context.embeddings - reference).max())
        rows.append(row)
    reference_row = max(rows, key=lambda r: r["distinct"])
    for row in rows:
        row["speedup_vs_most_distinct"] = round(reference_row["seconds"] / row["seconds"], 2)
    return {
        "dtype": str(model.dtype).removeprefix("torch."),
        "tokens_per_chunk": tokens,
        "corpus_size": model.corpus_size,
        "reference_chunks": reference_row["chunks"],
        "corpora": rows,
    }


def format_fit(fit: dict[str, Any]) -> str:
    """The fit block as a Markdown table, one column per corpus."""
    rows = fit["corpora"]
    n = fit["corpus_size"]
    cells = {
        "Distinct texts embedded": [str(r["distinct"]) for r in rows],
        "Fit (s)": [f"{r['seconds']:.3g}" for r in rows],
        f"Faster than the fit of {n} distinct": [
            f"{r['speedup_vs_most_distinct']:.1f}x" for r in rows
        ],
        f"Before: all {n} sampled entries (s)": [
            f"{r['every_entry_seconds']:.3g}" if "every_entry_seconds" in r else "-" for r in rows
        ],
        "Gain over before": [
            f"{r['speedup_vs_every_entry']:.1f}x" if "speedup_vs_every_entry" in r else "-"
            for r in rows
        ],
    }
    lines = [
        f"| Fit ({fit['dtype']}, chunks of ~{fit['tokens_per_chunk']} tokens, N = {n}) | "
        + " | ".join(f"{r['chunks']} chunks" for r in rows)
        + " |",
        "|---|" + "---:|" * len(rows),
    ]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in cells.items()]
    worst = max((r.get("max_abs_vs_every_entry", 0.0) for r in rows), default=0.0)
    lines.append("")
    lines.append(
        f"Fit contexts vs the first stage over every sampled entry: max abs difference {worst:.1e}."
    )
    return "\n".join(lines)
