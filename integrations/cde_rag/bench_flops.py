"""How close the engine runs to this machine's limit: FLOPs of its work, counted analytically,
and the peak of a large matrix multiply measured in the same run.

Only the matrix multiplies are counted (2 FLOPs per multiply-add): the layers' projections and
MLP (the "dense" part, linear in tokens) and attention's scores and weighted sums over the
(query, key) pairs a layer really uses (all keys in a global layer, those within the window in
a sliding-window one). LayerNorms, rotary positions, softmax and pooling are left out: they are
memory-bound and few FLOPs, which is where the time beyond the count goes. The count is of
useful work: the last layer's queries of unpooled rows, which the engine skips, are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BackboneShape:
    """What the FLOP count needs of a ModernBERT backbone (heads do not change it: heads x
    head size is the hidden size)."""

    hidden: int
    intermediate: int
    layer_types: tuple[str, ...]  # "full_attention" or "sliding_attention", one per layer
    window: int  # how far each side a sliding-window query sees (local_attention / 2)

    @classmethod
    def of(cls, config: Any) -> BackboneShape:
        """From a `ModernBertConfig` (a stage's, already cut to its layers)."""
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layer_types=tuple(config.layer_types),
            window=config.local_attention // 2,
        )


def attended_pairs(n: int, window: int | None, first_query: int = 0) -> int:
    """(query, key) pairs of one sequence of `n` tokens, queries `first_query`.. (`window`
    None: every key; else the keys within `window` positions either side)."""
    if n <= first_query:
        return 0
    if window is None:
        return (n - first_query) * n
    i = np.arange(first_query, n)
    return int((np.minimum(n - 1, i + window) - np.maximum(0, i - window) + 1).sum())


def sequence_flops(shape: BackboneShape, n: int, first_query: int = 0) -> dict[str, int]:
    """FLOPs of the backbone over one sequence of `n` tokens whose last layer computes the rows
    from `first_query` on (every layer before it computes all rows)."""
    d, inner = shape.hidden, shape.intermediate
    dense = attention = 0
    for index, layer_type in enumerate(shape.layer_types):
        start = first_query if index == len(shape.layer_types) - 1 else 0
        rows = max(n - start, 0)
        # keys and values for every row; query, output projection and MLP (Wi is 2 x inner wide,
        # a gated GLU) for the computed rows
        dense += 2 * n * d * 2 * d + 2 * rows * (d * d + d * d + d * 2 * inner + inner * d)
        window = shape.window if layer_type == "sliding_attention" else None
        attention += 2 * 2 * d * attended_pairs(n, window, start)  # scores, weighted sum
    return {"dense": dense, "attention": attention}


def stage_flops(
    shape: BackboneShape, sizes: Sequence[int], keep_from: Sequence[int] | None = None
) -> dict[str, int]:
    """FLOPs of a stage over sequences of `sizes` tokens (the second stage's include its context
    rows), the last layer computing rows `keep_from[i]`.., plus each text's head (two d x d
    linear layers)."""
    keep_from = keep_from or [0] * len(sizes)
    total = {"dense": 0, "attention": 0}
    for n, start in zip(sizes, keep_from, strict=True):
        for key, value in sequence_flops(shape, n, start).items():
            total[key] += value
    total["dense"] += len(sizes) * 2 * 2 * shape.hidden * shape.hidden
    total["total"] = total["dense"] + total["attention"]
    return total


def model_flops(
    model, texts: Sequence[str], stage: str, input_type: str = "document"
) -> dict[str, int]:
    """FLOPs of `model`'s "first" stage (no context) or "second" stage (with the N + soft
    prompt context rows) over `texts`, from their real token counts."""
    from .tokenization import DOCUMENT_PREFIX, QUERY_PREFIX

    if stage == "first":
        ids = model.encoder.encode(list(texts), DOCUMENT_PREFIX)
        return stage_flops(BackboneShape.of(model._first_config), [len(i) for i in ids])
    ids = model.encoder.encode(
        list(texts), QUERY_PREFIX if input_type == "query" else DOCUMENT_PREFIX
    )
    second = model.second_stage
    n_prefix = model.corpus_size + second.num_soft_prompts
    sizes = [n_prefix + len(i) for i in ids]
    if second.pool_ignore_contextual_tokens:
        keep = [n_prefix + model._pool_start(i) for i in ids]
    else:
        keep = [0] * len(ids)
    return stage_flops(BackboneShape.of(second.backbone.config), sizes, keep)


def matmul_peak(dtype: str, size: int = 2048, min_seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s of the best of repeated (size x size) by (size x size) products in `dtype` (at
    least 3, and at least `min_seconds` of them), made the way the engine's layers make theirs
    (`F.linear`): the ceiling of their speed here. The best of many, because on a shared machine
    only the quiet moments show what the cores can do."""
    import torch
    from torch.nn import functional as F

    kind = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(kind)
    b = torch.randn(size, size, generator=generator).to(kind)
    F.linear(a, b)  # warm-up: kernel choice, thread pool
    best, spent, calls = float("inf"), 0.0, 0
    while calls < 3 or spent < min_seconds:
        start = time.perf_counter()
        F.linear(a, b)
        seconds = time.perf_counter() - start
        best, spent, calls = min(best, seconds), spent + seconds, calls + 1
    return {
        "size": size,
        "best_seconds": round(best, 5),
        "gflops": round(2 * size**3 / best / 1e9, 1),
    }


def achieved(flops: dict[str, int], seconds: float, peak_gflops: float) -> dict[str, float]:
    """GFLOP/s reached by work of `flops` done in `seconds`, and as a percentage of the peak."""
    gflops = flops["total"] / seconds / 1e9 if seconds > 0 else 0.0
    return {
        "gflop": round(flops["total"] / 1e9, 3),
        "attention_share": round(flops["attention"] / flops["total"], 4),
        "seconds": round(seconds, 4),
        "gflops": round(gflops, 2),
        "percent_of_peak": round(100 * gflops / peak_gflops, 1),
    }


def format_flops(flops: dict[str, Any]) -> str:
    """The FLOP rates as a Markdown table: each mode beside its dtype's measured peak."""
    peak = flops["peak"]
    names = {
        "first": "First stage, forward (GFLOP/s)",
        "second": "Second stage, mixed lengths (GFLOP/s)",
        "query": "Single query, forward (GFLOP/s)",
    }
    lines = [
        "| Compute (matrix-multiply FLOPs) | Exact (fp32) | Fast (bf16) |",
        "|---|---:|---:|",
        f"| Peak: {peak['float32']['size']}^3 matmul (GFLOP/s) | "
        f"{peak['float32']['gflops']:.1f} | {peak['bfloat16']['gflops']:.1f} |",
    ]
    for stage, name in names.items():
        cells = [
            f"{flops[mode][stage]['gflops']:.1f} ({flops[mode][stage]['percent_of_peak']:.0f}%)"
            for mode in ("exact", "fast")
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    shares = ", ".join(
        f"{stage} {100 * flops['exact'][stage]['attention_share']:.0f}%" for stage in names
    )
    lines += ["", f"Share of the counted FLOPs in attention: {shares}."]
    return "\n".join(lines)
