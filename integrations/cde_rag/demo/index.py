"""The demo's service: the index every browser session shares, with no Gradio in it.

Indexing, search, answers, the with/without-context comparison and the stored context all live
here, so they are tested without a browser; `cde_rag.demo.ui` only lays a page over them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..answer import (
    AnswerError,
    LLMConfig,
    Source,
    extractive_answer,
    llm_answer,
    unknown_citations,
)
from ..context import DEFAULT_SEED, CorpusContext
from ..documents import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    SUPPORTED_SUFFIXES,
    LoadResult,
)
from ..drift import DEFAULT_SAMPLE
from ..errors import ContextError
from ..model import CDEModel
from ..paths import data_dir
from .file_times import FileTimes
from .render import count, md_escape, skipped_lines

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

COLLECTION = "demo"
DEFAULT_TOP_K = 4
DEFAULT_MAX_FILE_MB = 20
MAX_FILES_PER_RUN = 50
# Compare rankings over the whole collection up to this many chunks, else over the candidates
# the stored index retrieves (see `DemoIndex.compare`).
COMPARE_ALL_UP_TO = 300
COMPARE_CANDIDATES = 50

ProgressFn = Callable[[str, int, int], None]


def default_data_dir() -> Path:
    """$CDE_RAG_DEMO_DATA, else $XDG_DATA_HOME/cde-rag/demo (~/.local/share/cde-rag/demo).

    Next to the CLI's default Chroma folder (~/.local/share/cde-rag/chroma) but separate, so
    files dropped into the demo never mix with collections built by `cde-rag index`.
    """
    return data_dir("demo", env="CDE_RAG_DEMO_DATA")


def bundled_samples_dir() -> Path:
    """The sample documents that ship inside the package (`cde_rag/assets/samples`), so an
    installed wheel offers them as well as a checkout does."""
    folder = resources.files("cde_rag").joinpath("assets", "samples")
    # A regular (unzipped) install, editable or not, gives a real folder.
    return Path(str(folder))


def sample_files(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """The documents offered for a first try: those in `folder`, else the bundled samples
    (`bundled_samples_dir`); may be empty."""
    where = Path(folder).expanduser() if folder is not None else bundled_samples_dir()
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)


@dataclass(frozen=True)
class IndexedFile:
    """A file as the index holds it: its chunks, and when this version of it was stored (None:
    not recorded, e.g. stored by an older demo). `complete` is False for a file whose update
    was interrupted (old and new chunks side by side): indexing it again finishes it."""

    name: str
    chunks: int
    indexed_at: float | None
    complete: bool


@dataclass(frozen=True)
class Drift:
    """The last drift measurement (`DemoIndex.check_drift`): the status it was part of, and
    the collection state it saw (context fingerprint, records, removals), to tell whether the
    index changed since."""

    status: dict[str, Any]
    seen: tuple[str, int, int | None]


@dataclass
class Answer:
    """What one question produced: the chat text, the numbered sources it cites, and how."""

    text: str
    sources: list[Source]
    mode: str  # "extractive", "llm", or "extractive (LLM failed: ...)"


@dataclass
class Comparison:
    """The top of two rankings of the same chunks: stored context vs. the no-corpus fallback."""

    rows: list[list[Any]]
    pool: int
    whole_collection: bool
    overlap: int
    k: int


class DemoIndex:
    """The index every session of one demo process shares.

    Indexing and re-fitting take `lock` (one at a time, whoever asks); questions do not, so they
    stay answerable while files are being indexed. Chroma itself is safe to read while it is
    written.
    """

    def __init__(
        self,
        model: CDEModel,
        data_dir: str | os.PathLike[str],
        *,
        collection: str = COLLECTION,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        seed: int = DEFAULT_SEED,
        top_k: int = DEFAULT_TOP_K,
        max_file_bytes: int = DEFAULT_MAX_FILE_MB * 1024 * 1024,
        llm: LLMConfig | None = None,
    ) -> None:
        import chromadb

        self.model = model
        self.data_dir = Path(data_dir).expanduser().resolve()
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise NotADirectoryError(f"--data must be a folder, but {self.data_dir} is a file.")
        (self.data_dir / "chroma").mkdir(parents=True, exist_ok=True)
        self.client = chromadb.PersistentClient(
            path=str(self.data_dir / "chroma"),
            settings=chromadb.Settings(anonymized_telemetry=False),
        )
        self.name = collection
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.seed = seed
        self.top_k = top_k
        self.max_file_bytes = max_file_bytes
        self.llm = llm
        self.lock = threading.Lock()
        self._fallback: CorpusContext | None = None
        self._fallback_vectors: dict[str, np.ndarray] = {}
        self._fallback_lock = threading.Lock()
        self._times = FileTimes(self.data_dir)
        self._drift: Drift | None = None

    # -- the collection --------------------------------------------------------------------

    def collection(self) -> Collection | None:
        """The demo's collection with its stored context, or None before the first indexing.

        Raises `ContextError` when the stored index was made by another model: re-fitting
        (`refit`) re-embeds it with this one.
        """
        from chromadb.errors import NotFoundError

        from ..chroma import open_collection

        try:
            return open_collection(self.client, self.name, model=self.model)
        except NotFoundError:
            return None
        except ContextError as exc:
            raise ContextError(
                f"The stored index in {self.data_dir} cannot be used with model "
                f"{self.model.name!r}: {exc} Use 'Re-fit context' to re-embed it with this "
                "model, or start the demo with the model that built it."
            ) from exc

    def context(self) -> CorpusContext | None:
        from ..chroma import get_context

        collection = self.collection()
        return get_context(collection) if collection is not None else None

    def files(self) -> list[IndexedFile]:
        """Every indexed file, sorted by name (reads each chunk's metadata, no vectors)."""
        from ..chroma import list_sources

        collection = self.collection()
        if collection is None:
            return []
        times = self._times.read()
        return [
            IndexedFile(info.source, info.records, self._times.time_of(info, times), info.complete)
            for info in list_sources(collection)
        ]

    def documents(self) -> list[tuple[str, int]]:
        """(file, chunk count) for every indexed file, sorted by file name (`files` says more)."""
        return [(f.name, f.chunks) for f in self.files()]

    def status(self) -> dict[str, Any] | None:
        """The context's staleness (`cde_rag.chroma.context_status(...).to_dict()`): counts
        since the fit, read from metadata at no model cost, and the last drift measured for
        this context (`check_drift`) with `drift_outdated` when the index changed since.
        None before the first indexing."""
        from ..chroma import context_status

        collection = self.collection()
        if collection is None:
            return None
        status = {**context_status(collection, sample=0).to_dict(), "drift_outdated": False}
        last = self._drift
        if last is not None and last.seen[0] == status["context"]:
            for key in ("drift", "sampled", "refit_recommended", "advice"):
                status[key] = last.status[key]
            status["drift_outdated"] = last.seen != _seen(status)
        return status

    def check_drift(self, progress: ProgressFn | None = None) -> dict[str, Any] | None:
        """Measure the drift score on a sample of up to `DEFAULT_SAMPLE` stored chunks (the
        first stage of the model on them) and remember it for `status`; None when nothing is
        indexed."""
        from ..chroma import context_status

        collection = self.collection()
        if collection is None:
            return None
        if progress is not None:
            progress("drift", 0, 1)
        status = context_status(
            collection, sample=DEFAULT_SAMPLE, model=self.model, show_progress=False
        ).to_dict()
        self._drift = Drift(status, _seen(status))
        if progress is not None:
            progress("drift", 1, 1)
        return self.status()

    # -- indexing --------------------------------------------------------------------------

    def index_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: ProgressFn | None = None
    ) -> str:
        """Read, chunk, fit (first time only), embed and store `paths`; Markdown for the status
        box, naming every file that was skipped and why."""
        from ..ingest import index_documents

        paths = [Path(p) for p in paths]
        if not paths:
            return "No files given: choose .txt, .md, .pdf or .html files above, then press Index."
        if len(paths) > MAX_FILES_PER_RUN:
            return (
                f"{len(paths)} files at once is more than this demo indexes in one run "
                f"({MAX_FILES_PER_RUN}); index them in smaller groups."
            )
        started = time.perf_counter()
        # Loading here rather than through ingest.index_paths keeps the per-file reasons even
        # when no file is readable, named as the user named the files.
        loaded = self._load(paths, progress)
        skipped = skipped_lines(loaded.skipped)
        if not loaded.documents:
            return "**Nothing indexed:** no file could be read.\n\n" + skipped
        with self.lock:
            # A file uploaded again under its name replaces its stored version (its old chunks
            # are deleted once the new ones are stored); an unchanged one stores nothing.
            report = index_documents(
                loaded.documents,
                client=self.client,
                collection=self.name,
                model=self.model,
                chunk_size=self.chunk_size,
                chunk_overlap=self.chunk_overlap,
                seed=self.seed,
                # The fit's batches show in the status box (Gradio follows the model's bar),
                # however few chunks there are.
                show_progress=True,
                progress=progress,
            )
            self._record_times({doc.source for doc in loaded.documents})
        how = "fitted on these chunks" if report.new_collection else "kept (re-fit to update it)"
        replaced = f", {count(report.removed, 'old chunk')} replaced" if report.removed else ""
        message = (
            f"**Indexed {count(report.files, 'file')}** in {time.perf_counter() - started:.1f} s: "
            f"{count(report.chunks, 'chunk')}, {report.added} new, {report.skipped} already "
            f"stored{replaced}; context `{report.context[:12]}` {how}."
        )
        return message + ("\n\n" + skipped if skipped else "")

    def remove_file(self, name: str, progress: ProgressFn | None = None) -> str:
        """Delete every chunk of the indexed file `name`; Markdown for the status box.

        The corpus context stays as it was fitted (re-fit to fit it on what is left), and the
        removal counts in its status."""
        from ..chroma import delete_source, list_sources

        if not name:
            return "Choose an indexed file to remove first."
        with self.lock:
            collection = self.collection()
            if collection is None or not list_sources(collection, [name]):
                return f"**{md_escape(name)} is not indexed** (nothing was removed)."

            def step(done: int, total: int) -> None:
                if progress is not None:
                    progress("remove", done, total)

            removed = delete_source(collection, name, progress=step)
            self._times.forget([name])
        return (
            f"**Removed {md_escape(name)}:** {count(removed, 'chunk')} deleted. The corpus "
            "context stays as it was fitted until you re-fit it."
        )

    def _record_times(self, names: set[str]) -> None:
        from ..chroma import list_sources

        collection = self.collection()
        if collection is not None and names:
            self._times.record(list_sources(collection, names), time.time())

    def _load(self, paths: Sequence[Path], progress: ProgressFn | None) -> LoadResult:
        """Read each file on its own: whatever one file's loader raises (a parser that rejects
        the markup, a bug) skips that file with the reason, and the others are still read."""
        from ..documents import load_documents

        result = LoadResult()
        if progress is not None:
            progress("load", 0, len(paths))
        for done, path in enumerate(paths, 1):
            try:
                one = load_documents([path], max_bytes=self.max_file_bytes)
            except Exception as exc:
                first_line = (str(exc).strip().splitlines() or [""])[0][:200]
                reason = f"could not be read ({type(exc).__name__}: {first_line})"
                one = LoadResult(skipped=[(str(path), reason)])
            result.documents += one.documents
            result.skipped += one.skipped
            if progress is not None:
                progress("load", done, len(paths))
        return result

    def refit(self, seed: int, progress: ProgressFn | None = None) -> str:
        """Fit a new context on every stored chunk with `seed` and re-embed them all."""
        from ..chroma import rebuild_collection

        seed = int(seed)
        started = time.perf_counter()
        with self.lock:
            if not _exists(self.client, self.name):
                return "Nothing to re-fit yet: index some files first."
            if progress is not None:
                progress("context", 0, 1)

            def step(done: int, total: int) -> None:
                if progress is not None:
                    progress("store", done, total)

            collection = rebuild_collection(
                self.client, self.name, model=self.model, seed=seed, progress=step
            )
        from ..chroma import get_context

        context = get_context(collection)
        return (
            f"Re-fitted the context with seed {seed} on {context.source_size} chunks and "
            f"re-embedded {collection.count()} chunks in {time.perf_counter() - started:.1f} s "
            f"(fingerprint `{context.fingerprint[:12]}`)."
        )

    # -- asking ----------------------------------------------------------------------------

    def search(self, question: str, k: int | None = None) -> list[Source]:
        """The top `k` chunks for `question`, numbered 1..k as the answer cites them."""
        from ..ingest import query_collection

        collection = self.collection()
        if collection is None or collection.count() == 0:
            return []
        hits = query_collection(collection, question, k=min(k or self.top_k, collection.count()))
        return [Source(h.rank, h.source, h.chunk, h.score, h.text) for h in hits]

    def answer(self, question: str, k: int | None = None) -> Answer:
        """Retrieve, then answer with the LLM when one is configured, else extractively."""
        question = question.strip()
        if not question:
            raise ValueError("Type a question first.")
        sources = self.search(question, k)
        if not sources:
            busy = self.lock.locked()  # a first indexing or a re-fit swapping the collection
            text = (
                "The index is being built or re-embedded right now; ask again when the status "
                "box says it is done."
                if busy
                else "Nothing is indexed yet: upload documents on the left and press Index."
            )
            return Answer(text, [], "none")
        if self.llm is None:
            return Answer(extractive_answer(question, sources), sources, "extractive")
        try:
            text = llm_answer(question, sources, self.llm)
        except AnswerError as exc:
            fallback = extractive_answer(question, sources)
            return Answer(fallback, sources, f"extractive (LLM failed: {exc})")
        unknown = unknown_citations(text, sources)
        if unknown:
            listed = ", ".join(f"[{n}]" for n in unknown)
            text += f"\n\n(Note: the LLM cited {listed}, which match no retrieved source.)"
        return Answer(text, sources, "llm")

    # -- with and without the corpus context -----------------------------------------------

    def fallback_context(self) -> CorpusContext:
        """The model's no-corpus context, computed once per process."""
        with self._fallback_lock:
            if self._fallback is None:
                self._fallback = self.model.fallback_context()
            return self._fallback

    def compare(self, question: str, k: int | None = None) -> Comparison:
        """Rank the same chunks for `question` with the stored context and with the fallback.

        With context: the stored vectors and a query embedded with the stored context. Without:
        the same chunk texts and question embedded with `model.fallback_context()`, the model
        card's stand-in when no corpus is known. Small collections are ranked whole; larger
        ones over the stored index's top candidates, which keeps a click fast (fallback
        vectors are cached per chunk).
        """
        from ..chroma import get_context

        question = question.strip()
        if not question:
            raise ValueError("Type a question to compare the rankings for.")
        collection = self.collection()
        if collection is None or collection.count() == 0:
            raise ValueError("Nothing is indexed yet: index some files first.")
        k = k or self.top_k
        context = get_context(collection)
        query = self.model.embed_queries([question], context=context)[0]
        count = collection.count()
        whole = count <= COMPARE_ALL_UP_TO
        if whole:
            got = collection.get(include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
            ids, docs, metas = got["ids"], got["documents"], got["metadatas"]
            stored = np.asarray(got["embeddings"], dtype=np.float32)
        else:
            got = collection.query(
                query_embeddings=[query],
                n_results=COMPARE_CANDIDATES,
                include=["documents", "metadatas", "embeddings"],  # type: ignore[list-item]
            )
            ids, docs, metas = got["ids"][0], got["documents"][0], got["metadatas"][0]
            stored = np.asarray(got["embeddings"][0], dtype=np.float32)
        with_scores = stored @ query
        fallback = self.fallback_context()
        without_docs = self._fallback_documents(ids, docs or [], fallback)
        without_query = self.model.embed_queries([question], context=fallback)[0]
        without_scores = without_docs @ without_query
        labels = [_label(m) for m in metas or [{}] * len(ids)]
        k = min(k, len(ids))
        with_order = np.argsort(-with_scores, kind="stable")[:k]
        without_order = np.argsort(-without_scores, kind="stable")[:k]
        rows = [
            [
                rank + 1,
                labels[a],
                round(float(with_scores[a]), 4),
                labels[b],
                round(float(without_scores[b]), 4),
            ]
            for rank, (a, b) in enumerate(zip(with_order, without_order, strict=True))
        ]
        overlap = len(set(with_order.tolist()) & set(without_order.tolist()))
        return Comparison(rows, len(ids), whole, overlap, k)

    def _fallback_documents(
        self, ids: Sequence[str], texts: Sequence[str | None], fallback: CorpusContext
    ) -> np.ndarray:
        missing = [i for i, chunk_id in enumerate(ids) if chunk_id not in self._fallback_vectors]
        if missing:
            vectors = self.model.embed_documents(
                [texts[i] or "" for i in missing], context=fallback
            )
            for i, vector in zip(missing, vectors, strict=True):
                self._fallback_vectors[ids[i]] = vector
        return np.stack([self._fallback_vectors[chunk_id] for chunk_id in ids])


# -- helpers -----------------------------------------------------------------------------------


def _exists(client: Any, name: str) -> bool:
    from chromadb.errors import NotFoundError

    try:
        client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return False
    return True


def _seen(status: dict[str, Any]) -> tuple[str, int, int | None]:
    """What a status saw of the collection: its context, its records and removals since."""
    return (status["context"], status["records"], status["removed"])


def _label(meta: dict[str, Any] | None) -> str:
    meta = meta or {}
    return f"{meta.get('source', '?')} #{meta.get('chunk', '?')}"
