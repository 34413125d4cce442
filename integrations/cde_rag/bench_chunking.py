"""How fast `chunk_documents` splits text: normal prose beside repetitive text, in MB/s.

Repetitive input (one character repeated, `0,` repeated) is where a splitter's cost can stop
growing linearly; the ratio to prose shows it. Each input is measured at doubling sizes, from
`START_BYTES` up to `max_bytes`. Before each doubling, the next run's time is predicted from
how the last one grew (at least 2x); doubling stops when that would pass `budget_s` for the
input, so even a chunker whose cost grows with the cube of the size keeps the bench bounded,
and the report says which size was reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, Document, chunk_documents
from .paths import asset

START_BYTES = 1024
MB = 1024 * 1024
REPETITIVE = {"one_char": "a", "zero_comma": "0,"}
LABELS = {"prose": "Prose", "one_char": "One repeated character", "zero_comma": '"0," repeated'}

Chunker = Callable[[Sequence[Document]], Sequence[Any]]


def _default_chunker(documents: Sequence[Document]) -> Sequence[Any]:
    return chunk_documents(
        documents, chunk_size=DEFAULT_CHUNK_SIZE, chunk_overlap=DEFAULT_CHUNK_OVERLAP
    )


def text_of_size(unit: str, size: int) -> str:
    """`unit` repeated and cut to `size` characters (ASCII units: bytes = characters)."""
    return (unit * (size // len(unit) + 1))[:size]


def measure(unit: str, max_bytes: int, budget_s: float, chunker: Chunker) -> dict[str, Any]:
    """Chunk `unit` repeated to doubling sizes; the figures of the largest size reached."""
    size, runs, spent, growth = min(START_BYTES, max_bytes), [], 0.0, 2.0
    while True:
        document = Document(text=text_of_size(unit, size), source="bench.txt")
        start, cpu = time.perf_counter(), time.process_time()
        chunks = chunker([document])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if runs and runs[-1]["seconds"] > 0:
            growth = max(2.0, seconds / runs[-1]["seconds"])
        spent += seconds
        runs.append({"bytes": size, "seconds": seconds, "chunks": len(chunks)})
        if size >= max_bytes or spent + seconds * growth > budget_s:
            break
        size = min(2 * size, max_bytes)
    return {
        "bytes": size,
        "seconds": round(seconds, 6),
        "cpu_seconds": round(cpu, 6),
        "chunks": len(chunks),
        "mb_per_s": float(f"{size / MB / seconds:.4g}") if seconds > 0 else float("inf"),
        "reached_max": size >= max_bytes,
        "runs": [{**run, "seconds": round(run["seconds"], 6)} for run in runs],
    }


def chunking_throughput(
    max_mb: float = 1.0, budget_s: float = 4.0, *, chunker: Chunker | None = None
) -> dict[str, Any]:
    """MB/s of `chunk_documents` (default sizes) on prose and on repetitive text, and how many
    times faster prose is than each repetitive input."""
    chunker = chunker or _default_chunker
    max_bytes = max(1, int(max_mb * MB))
    prose = asset("bench", "prose.txt").read_text(encoding="utf-8")
    inputs = {"prose": prose + "\n\n", **REPETITIVE}
    chunker([Document(text=prose, source="warm-up.txt")])  # imports and first-call costs
    results = {name: measure(unit, max_bytes, budget_s, chunker) for name, unit in inputs.items()}
    prose_speed = results["prose"]["mb_per_s"]
    return {
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "chunk_overlap": DEFAULT_CHUNK_OVERLAP,
        "max_bytes": max_bytes,
        "budget_s": budget_s,
        "inputs": results,
        "prose_vs": {
            name: float(f"{prose_speed / results[name]['mb_per_s']:.4g}") for name in REPETITIVE
        },
    }


def format_chunking(report: dict[str, Any]) -> str:
    """The chunking figures as a Markdown table, one column per input."""
    inputs = report["inputs"]
    names = list(inputs)
    header = " | ".join(LABELS.get(name, name) for name in names)
    lines = [
        f"| Chunking ({report['chunk_size']}/{report['chunk_overlap']} characters) | {header} |",
        "|---|" + "---:|" * len(names),
        "| MB/s | " + " | ".join(f"{inputs[n]['mb_per_s']:.3g}" for n in names) + " |",
        "| Input size, seconds | "
        + " | ".join(
            f"{_size(inputs[n]['bytes'])}{'' if inputs[n]['reached_max'] else ' (capped)'}, "
            f"{inputs[n]['seconds']:.3f} s"
            for n in names
        )
        + " |",
        "| Prose vs this (x) | 1 | "
        + " | ".join(f"{report['prose_vs'][n]:.2f}" for n in names[1:])
        + " |",
    ]
    if not all(result["reached_max"] for result in inputs.values()):
        lines.append(
            f"(capped: the next doubling of that input would have taken it past the "
            f"{report['budget_s']:g} s budget)"
        )
    return "\n".join(lines)


def _size(count: int) -> str:
    return f"{count / MB:.3g} MB" if count >= MB else f"{count / 1024:.3g} KB"
