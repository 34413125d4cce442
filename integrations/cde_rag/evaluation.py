"""Retrieval quality on your own data: the fitted corpus context vs. the fallback vs. baselines.

`evaluate(model, "path/to/beir-folder")` (or `sample_path()`, a small dataset shipped with
cde-rag) reads a BEIR-format dataset, fits a context on its
corpus (one per seed), embeds documents and queries, retrieves by exact cosine similarity and
scores the rankings with ranx (nDCG@10, Recall@10, Recall@100, MRR@10 by default). The same is
done with the random-strings fallback context and with any LangChain `Embeddings` given as a
baseline, so the gain from the corpus context is a number measured on the user's data.

A BEIR document is embedded as `title + " " + text` (just `text` when the title is empty), the
convention of the BEIR toolkit. With a `cache_dir`, document and query vectors are written in
chunks (`.npy`, written atomically) under a key of embedder, context and texts, so a run that
was stopped resumes at the first missing chunk, and search reads the chunks memory-mapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ._files import write_atomic
from .context import DEFAULT_SEED, CorpusContext
from .errors import CDEError
from .paths import asset
from .progress import progress_bar_enabled

if TYPE_CHECKING:  # the engine (torch) loads with the model, not with this module
    from langchain_core.embeddings import Embeddings

    from .cached import CachedEmbedder
    from .model import CDEModel

    Embedder = CDEModel | CachedEmbedder  # the same embed_* signatures

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
DEFAULT_K = 100
DEFAULT_CHUNK_SIZE = 1000
# Queries scored against the documents at once; bounds memory at QUERY_BLOCK x (k + chunk).
QUERY_BLOCK = 1024
_LABELS = {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR", "map": "MAP", "precision": "P"}

# Texts per call to an embedder inside a saved chunk: the progress bar's step.
PROGRESS_STEP = 64
SAMPLE_DATASET = "eval-sample"

EmbedFn = Callable[[list[str]], np.ndarray]
log = logging.getLogger(__name__)
_PROBE = "cde-rag eval probe: does this embedder still embed text the same way?"


class DatasetError(CDEError, ValueError):
    """A BEIR folder is missing a file or holds a malformed line."""


# -- dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR split in memory: documents and queries in file order, graded judgements."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    path: str | None = None
    skipped_queries: int = 0
    """Queries in the qrels with no positive judgement: they cannot be scored and are left out."""

    @cached_property
    def doc_digest(self) -> str:
        return texts_digest(self.doc_texts)

    @cached_property
    def query_digest(self) -> str:
        return texts_digest(self.query_texts)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "split": self.split,
            "documents": len(self.doc_ids),
            "queries": len(self.query_ids),
            "judgements": sum(len(v) for v in self.qrels.values()),
            "skipped_queries": self.skipped_queries,
        }


def sample_path() -> Path:
    """The BEIR folder of the small dataset shipped with cde-rag (26 documents, 12 queries)."""
    return asset(SAMPLE_DATASET)


def doc_text(title: str, text: str) -> str:
    """What is embedded for a BEIR document: `title + " " + text`, or `text` without a title."""
    return f"{title} {text}" if title.strip() else text


def load_beir(path: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Read `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`, checking every line.

    Only queries judged in the split are kept (BEIR's `queries.jsonl` holds all splits).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"{folder} is not a folder: pass a BEIR dataset folder holding corpus.jsonl, "
            "queries.jsonl and qrels/<split>.tsv."
        )
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for required in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not required.is_file():
            raise DatasetError(
                f"{required} is missing: a BEIR folder needs corpus.jsonl, queries.jsonl and "
                f"qrels/{split}.tsv (choose another split with --split)."
            )
    corpus = _read_jsonl(folder / "corpus.jsonl", with_title=True)
    queries = _read_jsonl(folder / "queries.jsonl", with_title=False)
    if not corpus:
        raise DatasetError(f"{folder / 'corpus.jsonl'} holds no documents.")
    judged = _read_qrels(qrels_path)
    _check_known(judged, queries, corpus, qrels_path)
    qrels = {
        qid: {did: score for did, score in docs.items() if score > 0}
        for qid, docs in judged.items()
        if any(score > 0 for score in docs.values())
    }
    if not qrels:
        raise DatasetError(
            f"{qrels_path} has no positive judgement (score > 0): nothing can be scored."
        )
    query_ids = [qid for qid in queries if qid in qrels]
    return BeirDataset(
        name=folder.resolve().name,
        doc_ids=list(corpus),
        doc_texts=list(corpus.values()),
        query_ids=query_ids,
        query_texts=[queries[qid] for qid in query_ids],
        qrels=qrels,
        split=split,
        path=str(folder),
        skipped_queries=len(judged) - len(qrels),
    )


def _read_jsonl(path: Path, *, with_title: bool) -> dict[str, str]:
    """id -> text of a BEIR JSONL file; a bad line is named by file and line number."""
    out: dict[str, str] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where} is not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{where} must be a JSON object with _id and text.")
            rid = row.get("_id")
            if isinstance(rid, int) and not isinstance(rid, bool):
                rid = str(rid)
            if not isinstance(rid, str) or not rid:
                raise DatasetError(f"{where} has no _id (a non-empty string).")
            text = row.get("text")
            title = row.get("title") or ""
            if not isinstance(text, str) or not isinstance(title, str):
                raise DatasetError(f"{where} (_id {rid!r}) needs a string text field.")
            if rid in out:
                raise DatasetError(f"{where} repeats _id {rid!r}; ids must be unique.")
            out[rid] = doc_text(title, text) if with_title else text
    return out


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            cells = line.rstrip("\r\n").split("\t")
            where = f"{path}:{lineno}"
            if len(cells) != 3:
                raise DatasetError(
                    f"{where} has {len(cells)} tab-separated columns; qrels lines are "
                    "query-id<TAB>corpus-id<TAB>score."
                )
            qid, did, raw = (cell.strip() for cell in cells)
            try:
                score = int(raw)
            except ValueError:
                if lineno == 1:  # the header: query-id corpus-id score
                    continue
                raise DatasetError(f"{where} has score {raw!r}, not an integer.") from None
            if did in qrels.setdefault(qid, {}):
                raise DatasetError(f"{where} judges ({qid!r}, {did!r}) a second time.")
            qrels[qid][did] = score
    if not qrels:
        raise DatasetError(f"{path} holds no judgements.")
    return qrels


def _check_known(
    qrels: dict[str, dict[str, int]], queries: dict[str, str], corpus: dict[str, str], path: Path
) -> None:
    for kind, ids, known, source in (
        ("query", list(qrels), queries, "queries.jsonl"),
        ("corpus", [d for docs in qrels.values() for d in docs], corpus, "corpus.jsonl"),
    ):
        unknown = list(dict.fromkeys(i for i in ids if i not in known))
        if unknown:
            sample = ", ".join(repr(i) for i in unknown[:3])
            raise DatasetError(
                f"{path} names {len(unknown)} {kind} id(s) not in {source} (e.g. {sample}): "
                "fix the ids or remove those lines."
            )


# -- search and scoring ----------------------------------------------------------------------


def search(
    queries: np.ndarray, doc_chunks: Iterable[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for unit vectors), documents read chunk by chunk.

    Returns (indices, scores), each (n_queries, min(k, n_docs)), best first; equal scores are
    ordered by document position, so results do not depend on the chunking. `doc_chunks` is
    iterated once per block of `QUERY_BLOCK` queries, so it must be re-iterable (a list is).
    """
    queries = np.asarray(queries, dtype=np.float32)
    indices, scores = [], []
    for start in range(0, max(len(queries), 1), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK]
        best_i = np.zeros((len(block), 0), dtype=np.int64)
        best_s = np.zeros((len(block), 0), dtype=np.float32)
        offset = 0
        for chunk in doc_chunks:
            chunk_scores = block @ np.asarray(chunk, dtype=np.float32).T
            chunk_ids = np.broadcast_to(np.arange(offset, offset + len(chunk)), chunk_scores.shape)
            offset += len(chunk)
            best_i, best_s = _top_k(
                np.concatenate([best_i, chunk_ids], axis=1),
                np.concatenate([best_s, chunk_scores], axis=1),
                k,
            )
        indices.append(best_i)
        scores.append(best_s)
    return np.concatenate(indices), np.concatenate(scores)


def _top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best by (score descending, position ascending), sorted.

    argpartition finds the k best in linear time but picks arbitrarily among scores tied
    at the k-th place; rows with such a tie (duplicate documents) take the exact sort.
    """
    if scores.shape[1] > k:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, top, axis=1).min(axis=1, keepdims=True)
        for row in np.flatnonzero((scores >= kth).sum(axis=1) > k):
            top[row] = np.lexsort((ids[row], -scores[row]))[:k]
        ids = np.take_along_axis(ids, top, axis=1)
        scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def score_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query values of ranx `metrics` for a run (query -> {doc: score}).

    Queries of the qrels missing from the run count as retrieving nothing.
    """
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    ranx_qrels = Qrels({q: dict(d) for q, d in qrels.items()})
    ranx_run = Run({q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety notes from inside ranx
        try:
            means = ranx_evaluate(ranx_qrels, ranx_run, list(metrics), make_comparable=True)
        except ValueError as exc:
            raise ValueError(f"Unknown metric in {list(metrics)}: {exc}") from None
    if isinstance(means, float | np.floating):  # ranx unwraps a single metric
        means = {metrics[0]: means}
    per_query = {m: {q: float(v) for q, v in ranx_run.scores[m].items()} for m in metrics}
    return {m: float(means[m]) for m in metrics}, per_query


def check_metrics(metrics: Sequence[str], k: int) -> list[str]:
    """Fail before any embedding on an unknown metric or a cutoff deeper than `k`."""
    metrics = list(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
    if not metrics:
        raise ValueError("No metric given; e.g. ndcg@10,recall@100.")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    for metric in metrics:
        cutoff = metric.partition("@")[2].partition("-")[0]
        if cutoff and (not cutoff.isdigit() or int(cutoff) > k):
            raise ValueError(
                f"Metric {metric} needs the top {cutoff} documents but only {k} are retrieved: "
                f"raise k (--k) or drop the metric."
            )
    score_run({"q": {"d": 1}}, {"q": {"d": 1.0}}, metrics)  # ranx rejects unknown names
    return metrics


def metric_label(metric: str) -> str:
    name, at, cutoff = metric.partition("@")
    return f"{_LABELS.get(name, name)}{at}{cutoff}"


# -- chunked, resumable embedding ------------------------------------------------------------


@dataclass
class EmbeddedTexts:
    """Vectors of a text list in chunks, and what they cost. Iterating yields the chunks in
    order, each time anew; saved chunks are memory-mapped only while in use, so a corpus of
    any size needs neither the RAM nor one open file per chunk."""

    parts: list[np.ndarray | Path]
    computed: int
    reused: int

    def __iter__(self) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield np.load(part, mmap_mode="r") if isinstance(part, Path) else part

    def stacked(self) -> np.ndarray:
        return np.concatenate(list(self))


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256(f"{len(texts)}\n".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def embed_in_chunks(
    texts: Sequence[str],
    embed: EmbedFn,
    *,
    folder: Path | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    desc: str = "Embedding",
    show_progress: bool | None = None,
) -> EmbeddedTexts:
    """Embed `texts` chunk by chunk, L2-normalised; with a `folder`, each chunk is saved as
    `NNNNNN.npy` once computed and loaded instead of recomputed when the folder is reused.
    `embed` gets at most `PROGRESS_STEP` texts per call, so the bar moves within a chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    starts = range(0, len(texts), chunk_size)
    parts: list[np.ndarray | Path] = []
    computed = reused = 0
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    show = progress_bar_enabled(show_progress, count=len(texts))
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not show) as bar:
        for n, start in enumerate(starts):
            part = list(texts[start : start + chunk_size])
            path = folder / f"{n:06d}.npy" if folder is not None else None
            if path is not None and _is_chunk(path, len(part)):
                parts.append(path)
                reused += len(part)
                bar.update(len(part))
            else:
                pieces = []
                for step in range(0, len(part), PROGRESS_STEP):
                    piece = part[step : step + PROGRESS_STEP]
                    pieces.append(_normalise(embed(piece), len(piece), desc))
                    bar.update(len(piece))
                vectors = np.concatenate(pieces)
                if path is not None:
                    _save_atomic(path, vectors)
                parts.append(path if path is not None else vectors)
                computed += len(part)
    return EmbeddedTexts(parts, computed, reused)


def _is_chunk(path: Path, rows: int) -> bool:
    """A saved chunk of the expected size; anything else is computed again and overwritten."""
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return array.ndim == 2 and array.shape[0] == rows and array.dtype == np.float32


def _normalise(vectors: Any, rows: int, what: str) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != rows:
        raise CDEError(
            f"{what}: the embedder returned shape {array.shape} for {rows} texts; it must "
            "return one vector per text."
        )
    if not np.isfinite(array).all():
        raise CDEError(f"{what}: the embedder returned NaN or infinite values.")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, buffer.getvalue())


# -- settings and the report ------------------------------------------------------------------


@dataclass
class SettingResult:
    """One row of the report: how one embedder/context ranked the documents."""

    name: str
    kind: str  # "fitted" | "fallback" | "baseline"
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    seed: int | None = None
    context: dict[str, Any] | None = None
    documents_embedded: int = 0
    documents_reused: int = 0
    queries_embedded: int = 0
    queries_reused: int = 0
    seconds: float = 0.0
    rankings: dict[str, list[tuple[str, float]]] = field(default_factory=dict, repr=False)
    """Top-k (doc id, score) per query, best first; kept in memory, not written to JSON."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "seed": self.seed,
            "metrics": self.metrics,
            "context": self.context,
            "documents_embedded": self.documents_embedded,
            "documents_reused": self.documents_reused,
            "queries_embedded": self.queries_embedded,
            "queries_reused": self.queries_reused,
            "seconds": round(self.seconds, 3),
            "per_query": self.per_query,
        }


@dataclass
class EvalReport:
    dataset: dict[str, Any]
    model: dict[str, Any]
    metrics: list[str]
    k: int
    results: list[SettingResult]
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def result(self, name: str) -> SettingResult:
        for row in self.results:
            if row.name == name:
                return row
        raise KeyError(f"No setting {name!r}; settings: {[r.name for r in self.results]}")

    @property
    def seed_summary(self) -> dict[str, Any] | None:
        """Mean, sample standard deviation, min and max over fitted seeds (2 or more)."""
        fitted = [r for r in self.results if r.kind == "fitted"]
        if len(fitted) < 2:
            return None
        values = {m: np.array([r.metrics[m] for r in fitted]) for m in self.metrics}
        return {
            "seeds": [r.seed for r in fitted],
            "mean": {m: float(v.mean()) for m, v in values.items()},
            "std": {m: float(v.std(ddof=1)) for m, v in values.items()},
            "min": {m: float(v.min()) for m, v in values.items()},
            "max": {m: float(v.max()) for m, v in values.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at,
            "dataset": self.dataset,
            "model": self.model,
            "metrics": self.metrics,
            "k": self.k,
            "settings": [r.to_dict() for r in self.results],
            "seed_summary": self.seed_summary,
        }

    def table(self) -> str:
        """A plain-text table: one row per setting, plus mean ± std over seeds."""
        header = ["setting", *(metric_label(m) for m in self.metrics)]
        rows = [[r.name, *(f"{r.metrics[m]:.4f}" for m in self.metrics)] for r in self.results]
        summary = self.seed_summary
        if summary:
            rows.insert(
                len(summary["seeds"]),
                [
                    f"fitted, mean ± std of {len(summary['seeds'])} seeds",
                    *(f"{summary['mean'][m]:.4f} ± {summary['std'][m]:.4f}" for m in self.metrics),
                ],
            )
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            return "  ".join(
                [first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]
            )

        rule = "  ".join("-" * w for w in widths)
        title = (
            f"{self.dataset['name']} ({self.dataset['split']}): {self.dataset['documents']} "
            f"documents, {self.dataset['queries']} queries; model {self.model['name']}"
        )
        return "\n".join([title, line(header), rule, *(line(r) for r in rows)])

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """A grouped bar chart (PNG): one group per metric, one bar per setting; the fitted
        context's bar is the mean over seeds with a std error bar and a dot per seed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fitted = [r for r in self.results if r.kind == "fitted"]
        bars: list[tuple[str, list[float], list[float], list[list[float]]]] = []
        if fitted:
            per_seed = [[r.metrics[m] for r in fitted] for m in self.metrics]
            label = f"fitted (mean of {len(fitted)} seeds)" if len(fitted) > 1 else fitted[0].name
            bars.append(
                (
                    label,
                    [float(np.mean(v)) for v in per_seed],
                    [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in per_seed],
                    per_seed if len(fitted) > 1 else [],
                )
            )
        for r in self.results:
            if r.kind != "fitted":
                bars.append((r.name, [r.metrics[m] for m in self.metrics], [], []))
        fig = Figure(figsize=(max(6.0, 1.6 * len(self.metrics) * max(1, len(bars)) / 2), 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(bars))
        x = np.arange(len(self.metrics))
        for i, (label, heights, errors, dots) in enumerate(bars):
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, heights, width, label=label, yerr=errors or None, capsize=3)
            for j, values in enumerate(dots):
                ax.scatter([pos[j]] * len(values), values, s=10, color="black", zorder=3)
        ax.set_xticks(x, [metric_label(m) for m in self.metrics])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score")
        ax.set_title(
            f"{self.dataset['name']}: {self.dataset['queries']} queries, "
            f"{self.dataset['documents']} documents ({self.model['name']})",
            fontsize=10,
        )
        ax.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, len(bars))
        )
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=120, format="png")
        return target

    def write(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """`report.json` and `report.png` in `folder`."""
        out = Path(folder).expanduser()
        return {"json": self.save_json(out / "report.json"), "plot": self.plot(out / "report.png")}


@dataclass
class _Setting:
    name: str
    kind: str
    key: str
    embed_documents: EmbedFn
    embed_queries: EmbedFn
    seed: int | None = None
    context: CorpusContext | None = None


def evaluate(
    model: CDEModel,
    data: BeirDataset | str | os.PathLike[str],
    *,
    seeds: Sequence[int] = (DEFAULT_SEED,),
    fallback: bool = True,
    baselines: Mapping[str, Embeddings] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    k: int = DEFAULT_K,
    split: str = "test",
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    show_progress: bool | None = None,
) -> EvalReport:
    """Score retrieval on a BEIR dataset for each fitted seed, the fallback and each baseline.

    With `cache_dir`, contexts and vectors are kept there (resumable; see the module doc), and
    the model's embeddings go through a cache in `cache_dir/embeddings.sqlite` that wraps the
    model (`CachedEmbedder`): the model, which may be shared by the process, is not modified.
    Phases are logged (INFO, logger `cde_rag.evaluation`); `show_progress` shows the bars.
    """
    metrics = check_metrics(metrics, k)
    seeds = _check_seeds(seeds)
    dataset = data if isinstance(data, BeirDataset) else load_beir(data, split)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    with contextlib.ExitStack() as stack:
        embedder: Embedder = model
        if cache is not None:
            from .cached import CachedEmbedder

            embedder = stack.enter_context(CachedEmbedder(model, cache / "embeddings.sqlite"))
        settings = [
            _fitted_setting(model, embedder, dataset, seed, cache, show_progress) for seed in seeds
        ]
        if fallback:
            settings.append(_fallback_setting(model, embedder, cache, show_progress))
        for name, embeddings in (baselines or {}).items():
            settings.append(_baseline_setting(name, embeddings))
        names = [s.name for s in settings]
        if not names:
            raise ValueError(
                "Nothing to evaluate: give a seed, keep the fallback or add a baseline."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"Setting names must be unique, got {names}: rename the baseline.")
        results = [
            _run_setting(s, dataset, metrics, k, cache, chunk_size, show_progress) for s in settings
        ]
    return EvalReport(
        dataset=dataset.describe(),
        model={
            "name": model.name,
            "fingerprint": model.fingerprint,
            "revision": model.revision,
            "backbone_revision": model.backbone_revision,
            "dtype": str(model.dtype).removeprefix("torch."),
            "corpus_size": model.corpus_size,
            "dim": model.dim,
        },
        metrics=metrics,
        k=k,
        results=results,
    )


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad or len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds must be distinct non-negative integers, got {seeds}.")
    return seeds


def _cde_setting(
    model: CDEModel,
    embedder: Embedder,
    ctx: CorpusContext,
    name: str,
    kind: str,
    seed: int | None,
) -> _Setting:
    def documents(texts: list[str]) -> np.ndarray:
        return embedder.embed_documents(texts, context=ctx, show_progress=False)

    def queries(texts: list[str]) -> np.ndarray:
        return embedder.embed_queries(texts, context=ctx, show_progress=False)

    # The checksum, not the fingerprint: saved vectors follow the context's exact numbers,
    # and two fits of one recipe (float32, bfloat16) have different ones.
    key = f"cde/{_model_tag(model)}/{ctx.checksum}"
    return _Setting(name, kind, key, documents, queries, seed=seed, context=ctx)


def _fitted_setting(
    model: CDEModel,
    embedder: Embedder,
    dataset: BeirDataset,
    seed: int,
    cache: Path | None,
    show_progress: bool | None,
) -> _Setting:
    name = f"fitted (seed {seed})"
    tag = f"{_model_tag(model)}-{dataset.doc_digest[:16]}-seed{seed}"
    ctx = _cached_context(
        cache,
        tag,
        model,
        lambda: model.fit_context(dataset.doc_texts, seed=seed, show_progress=show_progress),
        f"{name}: fitting the context on {len(dataset.doc_texts)} documents",
    )
    return _cde_setting(model, embedder, ctx, name, "fitted", seed)


def _fallback_setting(
    model: CDEModel, embedder: Embedder, cache: Path | None, show_progress: bool | None
) -> _Setting:
    name = "fallback (random strings)"
    ctx = _cached_context(
        cache,
        f"{_model_tag(model)}-fallback",
        model,
        lambda: model.fallback_context(show_progress=show_progress),
        f"{name}: embedding the model's random strings as the context",
    )
    return _cde_setting(model, embedder, ctx, name, "fallback", None)


def _model_tag(model: CDEModel) -> str:
    """The model and the dtype it computes in: a run in bfloat16 fits (and measures) its own
    contexts, never reuses a float32 run's."""
    return f"{model.fingerprint[:16]}-{str(model.dtype).removeprefix('torch.')}"


def _cached_context(
    cache: Path | None,
    tag: str,
    model: CDEModel,
    fit: Callable[[], CorpusContext],
    what: str,
) -> CorpusContext:
    """A context fitted once per cache: reloaded on a resumed run, so vector keys still match."""
    path = cache / "contexts" / f"{tag}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        try:
            ctx = model.check_context(CorpusContext.load(path))
        except CDEError:
            pass  # unreadable or from another model: fit again and replace it
        else:
            log.info("%s: reloaded from %s", what.partition(":")[0], path)
            return ctx
    log.info("%s", what)
    ctx = fit()
    if path is not None:
        ctx.save(path)
    return ctx


def _baseline_setting(name: str, embeddings: Embeddings) -> _Setting:
    log.info("%s: checking the baseline embeds (two probe texts)", name)
    if not (hasattr(embeddings, "embed_documents") and hasattr(embeddings, "embed_query")):
        raise TypeError(
            f"Baseline {name!r} is a {type(embeddings).__name__}; pass a LangChain Embeddings "
            "(with embed_documents and embed_query)."
        )

    def documents(texts: list[str]) -> np.ndarray:
        return np.asarray(embeddings.embed_documents(texts), dtype=np.float32)

    def queries(texts: list[str]) -> np.ndarray:
        return np.asarray([embeddings.embed_query(t) for t in texts], dtype=np.float32)

    cls = type(embeddings)
    # Saved vectors are reused only by an embedder that still embeds two probes the same way
    # (a repr or a name would miss another model or context behind the same class). Probing
    # now also fails a broken baseline (bad key, no server) before any long CDE work.
    probes = np.concatenate(
        [_normalise(documents([_PROBE]), 1, name), _normalise(queries([_PROBE]), 1, name)]
    )
    probe_hash = hashlib.sha256(np.round(probes, 5).tobytes()).hexdigest()
    key = f"baseline/{cls.__module__}.{cls.__qualname__}/{probe_hash}"
    return _Setting(name, "baseline", key, documents, queries)


def _run_setting(
    setting: _Setting,
    dataset: BeirDataset,
    metrics: list[str],
    k: int,
    cache: Path | None,
    chunk_size: int,
    show_progress: bool | None,
) -> SettingResult:
    started = time.perf_counter()
    log.info("%s: embedding documents and queries", setting.name)
    embedded = {}
    for input_type, texts, digest, embed in (
        ("documents", dataset.doc_texts, dataset.doc_digest, setting.embed_documents),
        ("queries", dataset.query_texts, dataset.query_digest, setting.embed_queries),
    ):
        folder = None
        if cache is not None:
            key = f"{setting.key}\n{input_type}\n{digest}\n{chunk_size}"
            folder = cache / "vectors" / hashlib.sha256(key.encode()).hexdigest()[:32]
        embedded[input_type] = embed_in_chunks(
            texts,
            embed,
            folder=folder,
            chunk_size=chunk_size,
            desc=f"{setting.name}: {input_type}",
            show_progress=show_progress,
        )
    docs, queries = embedded["documents"], embedded["queries"]
    query_vectors = queries.stacked()
    doc_width = next(iter(docs)).shape[1]
    if doc_width != query_vectors.shape[1]:
        raise CDEError(
            f"{setting.name}: documents and queries have different widths "
            f"({doc_width} vs {query_vectors.shape[1]})."
        )
    log.info("%s: searching and scoring", setting.name)
    indices, scores = search(query_vectors, docs, k)
    rankings = {
        qid: [(dataset.doc_ids[i], float(s)) for i, s in zip(row_i, row_s, strict=True)]
        for qid, row_i, row_s in zip(dataset.query_ids, indices, scores, strict=True)
    }
    run = {qid: dict(ranked) for qid, ranked in rankings.items()}
    means, per_query = score_run(dataset.qrels, run, metrics)
    log.info(
        "%s: %s",
        setting.name,
        ", ".join(f"{metric_label(m)} {means[m]:.4f}" for m in metrics),
    )
    return SettingResult(
        name=setting.name,
        kind=setting.kind,
        metrics=means,
        per_query=per_query,
        seed=setting.seed,
        context=_context_info(setting.context),
        documents_embedded=docs.computed,
        documents_reused=docs.reused,
        queries_embedded=queries.computed,
        queries_reused=queries.reused,
        seconds=time.perf_counter() - started,
        rankings=rankings,
    )


def _context_info(ctx: CorpusContext | None) -> dict[str, Any] | None:
    if ctx is None:
        return None
    info = ctx.describe(sample=0)
    info.pop("sample")
    return info
