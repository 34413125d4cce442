"""What `cde-rag index` adds to the engine, and whether its memory stays flat.

Speed: `index_paths` over a generated folder, into a collection created beforehand with a
context (so no fit is timed: fitting is measured on its own), beside `CDEModel.embed_documents`
on the same chunks under the same context, in the same run. Their ratio is what ingestion
costs on top of embedding (reading, chunking, ids, versions, Chroma reads and writes); the
target is at most 1.10.

Memory: the peak resident memory of a fresh process indexing a folder, and of another indexing
a folder 10x larger, so each peak is its own. Both run a checkpoint of one narrow layer, so
the 10x folder stays affordable: the model's size adds the same to both peaks, and only what
ingestion holds can make the second grow.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, chunk_documents, load_documents
from .paths import asset

# The memory measure's checkpoint (built with `cde_rag.bench.build_checkpoint`).
MEMORY_SIZES = {
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "corpus_size": 64,
}
GROWTH = 10
COLLECTION = "bench-ingest"
# A fresh process indexing `folder` with `model` (argv: model, folder, device or ""), printing
# its figures as JSON.
_CHILD = """
import json, sys
from cde_rag.bench_ingest import index_once
print(json.dumps(index_once(sys.argv[1], sys.argv[2], sys.argv[3] or None)))
"""


def write_folder(folder: str | os.PathLike[str], files: int, seed: int = 0) -> Path:
    """`files` .md and .txt files of 2-8 paragraphs of prose (about 4 chunks each at the
    default chunk size), the same for the same arguments."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = asset("bench", "prose.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    for i in range(files):
        paragraphs = [
            " ".join(rng.choice(words) for _ in range(rng.randint(40, 160)))
            for _ in range(rng.randint(2, 8))
        ]
        (folder / f"note{i:05d}.{'md' if i % 2 else 'txt'}").write_text("\n\n".join(paragraphs))
    return folder


def _client(folder: Path):
    import chromadb

    return chromadb.PersistentClient(
        str(folder), settings=chromadb.Settings(anonymized_telemetry=False)
    )


def _collection_with_context(client, model):
    """A new collection whose context is made of random first-stage rows (no fit to wait
    for; speed does not depend on the context's values)."""
    import numpy as np

    from . import chroma

    rows = np.random.default_rng(0).standard_normal((model.corpus_size, model.dim)) * 0.02
    context = model.context_from_embeddings(rows.astype(np.float32))
    return chroma.create_collection(client, COLLECTION, model=model, context=context), context


def _index(folder: Path, client, model) -> Any:
    from .ingest import index_paths

    return index_paths(
        [folder],
        client=client,
        collection=COLLECTION,
        model=model,
        chunk_size=DEFAULT_CHUNK_SIZE,
        chunk_overlap=DEFAULT_CHUNK_OVERLAP,
        show_progress=False,
    )


def ingest_speed(
    model_path: str | os.PathLike[str], files: int, *, device: str | None = None
) -> dict[str, Any]:
    """Seconds (wall and CPU) of `embed_documents` on a generated folder's chunks and of
    `index_paths` on that folder, and of one pass that only reads and chunks it."""
    from .bench import _timed
    from .model import CDEModel

    model = CDEModel.from_pretrained(model_path, device=device)
    with tempfile.TemporaryDirectory(prefix="cde-rag-bench-ingest-") as tmp:
        folder = write_folder(Path(tmp) / "notes", files)
        read_s, _, chunks = _timed(lambda: chunk_documents(load_documents([folder]).documents))
        texts = [c.text for c in chunks]
        client = _client(Path(tmp) / "db")
        _, context = _collection_with_context(client, model)
        model.embed_documents(texts[:1], context=context, show_progress=False)  # warm-up
        embed_s, embed_cpu, _ = _timed(
            lambda: model.embed_documents(texts, context=context, show_progress=False)
        )
        index_s, index_cpu, report = _timed(lambda: _index(folder, client, model))
    if report.added != len(chunks):
        raise RuntimeError(f"index_paths stored {report.added} of {len(chunks)} chunks")
    return {
        "files": files,
        "chunks": len(chunks),
        "embed_seconds": round(embed_s, 3),
        "embed_cpu_seconds": round(embed_cpu, 3),
        "index_seconds": round(index_s, 3),
        "index_cpu_seconds": round(index_cpu, 3),
        "read_chunk_pass_seconds": round(read_s, 4),
        "ratio": round(index_s / embed_s, 3),
        "cpu_ratio": round(index_cpu / embed_cpu, 3) if embed_cpu > 0 else None,
        "target_ratio": 1.10,
    }


def index_once(
    model_path: str | os.PathLike[str], folder: str | os.PathLike[str], device: str | None
) -> dict[str, Any]:
    """Index `folder` in this process (meant to be a fresh one): its chunks and resident memory
    after loading the model and at its peak, in MB."""
    from .bench import rss_mb
    from .model import CDEModel

    model = CDEModel.from_pretrained(model_path, device=device)
    with tempfile.TemporaryDirectory(prefix="cde-rag-bench-memory-") as tmp:
        client = _client(Path(tmp))
        _collection_with_context(client, model)
        before = rss_mb()["rss_mb"]
        report = _index(Path(folder), client, model)
    return {
        "chunks": report.chunks,
        "rss_before_mb": before,
        "peak_rss_mb": rss_mb()["peak_rss_mb"],
    }


def peak_memory(files: int, *, device: str | None = None) -> dict[str, Any]:
    """Peak RSS of fresh processes indexing `files` and `GROWTH` x `files` generated files."""
    from .bench import build_checkpoint

    with tempfile.TemporaryDirectory(prefix="cde-rag-bench-memory-") as tmp:
        model = build_checkpoint(Path(tmp) / "model", sizes=MEMORY_SIZES)
        runs = {}
        for scale in (1, GROWTH):
            folder = write_folder(Path(tmp) / f"notes-{scale}x", files * scale)
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, str(model), str(folder), device or ""],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            )
            if done.returncode != 0:
                raise RuntimeError(f"The memory measure's indexing failed:\n{done.stderr[-2000:]}")
            runs[f"{scale}x"] = {"files": files * scale, **json.loads(done.stdout.splitlines()[-1])}
    one, many = runs["1x"]["peak_rss_mb"], runs[f"{GROWTH}x"]["peak_rss_mb"]
    return {
        **runs,
        "growth": round(many / one - 1, 4),
        "target_growth": 0.30,
        "model": MEMORY_SIZES,
    }


def ingest_benchmark(
    model_path: str | os.PathLike[str], files: int, memory_files: int, device: str | None = None
) -> dict[str, Any]:
    """The "ingest" block of `cde-rag bench`: speed beside the engine, and peak memory."""
    return {
        "speed": ingest_speed(model_path, files, device=device),
        "memory": peak_memory(memory_files, device=device),
    }


def format_ingest(report: dict[str, Any]) -> str:
    """The ingest figures as two Markdown tables: time beside the engine, and peak memory."""
    speed, memory = report["speed"], report["memory"]
    one, many = memory["1x"], memory[f"{GROWTH}x"]
    lines = [
        f"| Ingestion ({speed['files']} files, {speed['chunks']} chunks) | Seconds | "
        "CPU seconds | vs embed_documents |",
        "|---|---:|---:|---:|",
        f"| `CDEModel.embed_documents` on the chunks | {speed['embed_seconds']:.2f} | "
        f"{speed['embed_cpu_seconds']:.2f} | 1 |",
        f"| `index_paths` on the folder (read, chunk, ids, Chroma, embed) | "
        f"{speed['index_seconds']:.2f} | {speed['index_cpu_seconds']:.2f} | "
        f"{speed['ratio']:.3f}x (CPU {speed['cpu_ratio']:.3f}x; target <= "
        f"{speed['target_ratio']:.2f}x) |",
        f"| One pass that only reads and chunks the folder | "
        f"{speed['read_chunk_pass_seconds']:.3f} | | |",
        "",
        f"| Peak RSS, fresh process (MB) | 1x: {one['files']} files, {one['chunks']} chunks | "
        f"{GROWTH}x: {many['files']} files, {many['chunks']} chunks | Growth |",
        "|---|---:|---:|---:|",
        f"| After loading the model | {one['rss_before_mb']:.0f} | {many['rss_before_mb']:.0f} | |",
        f"| Peak | {one['peak_rss_mb']:.0f} | {many['peak_rss_mb']:.0f} | "
        f"{memory['growth']:+.1%} (target <= +{memory['target_growth']:.0%}) |",
    ]
    return "\n".join(lines)
