"""The Gradio demo: chat over your documents, with cited sources and the corpus context in view.

`DemoIndex` is the part every browser session shares (one Chroma collection, the model, the
indexing lock) and holds all the logic, so it is tested without a browser; `build_demo` lays
the Gradio `Blocks` over it, and `launch` starts it with safe defaults (loopback only, no share
link, no analytics, bounded uploads, no extra served folders).
"""

from __future__ import annotations

import html
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Set before Gradio is imported anywhere in this process: Gradio reads it at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import numpy as np

from .answer import (
    AnswerError,
    LLMConfig,
    Source,
    extractive_answer,
    llm_answer,
    unknown_citations,
)
from .context import DEFAULT_SEED, CorpusContext
from .documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, SUPPORTED_SUFFIXES
from .errors import CDEError, ContextError
from .model import CDEModel

if TYPE_CHECKING:
    import gradio as gr
    from chromadb.api.models.Collection import Collection

COLLECTION = "demo"
DEFAULT_TOP_K = 4
DEFAULT_MAX_FILE_MB = 20
MAX_FILES_PER_RUN = 50
# Compare rankings over the whole collection up to this many chunks, else over the candidates
# the stored index retrieves (see `DemoIndex.compare`).
COMPARE_ALL_UP_TO = 300
COMPARE_CANDIDATES = 50
LOOPBACK = ("127.0.0.1", "localhost", "::1")

ProgressFn = Callable[[str, int, int], None]


def default_data_dir() -> Path:
    """$CDE_RAG_DEMO_DATA, else $XDG_DATA_HOME/cde-rag/demo (~/.local/share/cde-rag/demo).

    Next to the CLI's default Chroma folder (~/.local/share/cde-rag/chroma) but separate, so
    files dropped into the demo never mix with collections built by `cde-rag index`.
    """
    if os.environ.get("CDE_RAG_DEMO_DATA"):
        return Path(os.environ["CDE_RAG_DEMO_DATA"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "cde-rag" / "demo"


def sample_files(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """The sample documents offered for a first try: `folder`, else the repository's
    demo/samples when cde-rag runs from a checkout (an editable install); may be empty."""
    if folder is None:
        folder = Path(__file__).resolve().parents[2] / "demo" / "samples"
    where = Path(folder).expanduser()
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)


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

    # -- the collection --------------------------------------------------------------------

    def collection(self) -> Collection | None:
        """The demo's collection with its stored context, or None before the first indexing.

        Raises `ContextError` when the stored index was made by another model: re-fitting
        (`refit`) re-embeds it with this one.
        """
        from chromadb.errors import NotFoundError

        from .chroma import open_collection

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
        from .chroma import get_context

        collection = self.collection()
        return get_context(collection) if collection is not None else None

    def documents(self) -> list[tuple[str, int]]:
        """(file, chunk count) for every indexed file, sorted by file name."""
        collection = self.collection()
        if collection is None:
            return []
        counts: dict[str, int] = {}
        for meta in _all_metadatas(collection):
            source = str((meta or {}).get("source", "?"))
            counts[source] = counts.get(source, 0) + 1
        return sorted(counts.items())

    # -- indexing --------------------------------------------------------------------------

    def index_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: ProgressFn | None = None
    ) -> str:
        """Read, chunk, fit (first time only), embed and store `paths`; Markdown for the status
        box, naming every file that was skipped and why."""
        from .documents import load_documents
        from .ingest import index_documents

        paths = [Path(p) for p in paths]
        if not paths:
            return "No files given: choose .txt, .md, .pdf or .html files above, then press Index."
        if len(paths) > MAX_FILES_PER_RUN:
            return (
                f"{len(paths)} files at once is more than this demo indexes in one run "
                f"({MAX_FILES_PER_RUN}); index them in smaller groups."
            )
        started = time.perf_counter()
        with self.lock:
            # Loading here rather than through ingest.index_paths keeps the per-file reasons
            # even when no file is readable, named as the user named the files.
            loaded = load_documents(
                paths,
                max_bytes=self.max_file_bytes,
                progress=None if progress is None else lambda d, t: progress("load", d, t),
            )
            skipped = _skipped_lines(loaded.skipped)
            if not loaded.documents:
                return "**Nothing indexed:** no file could be read.\n\n" + skipped
            report = index_documents(
                loaded.documents,
                client=self.client,
                collection=self.name,
                model=self.model,
                chunk_size=self.chunk_size,
                chunk_overlap=self.chunk_overlap,
                seed=self.seed,
                progress=progress,
            )
        how = "fitted on these chunks" if report.new_collection else "kept (re-fit to update it)"
        message = (
            f"**Indexed {_count(report.files, 'file')}** in {time.perf_counter() - started:.1f} s: "
            f"{_count(report.chunks, 'chunk')}, {report.added} new, {report.skipped} already "
            "stored; "
            f"context `{report.context[:12]}` {how}."
        )
        return message + ("\n\n" + skipped if skipped else "")

    def refit(self, seed: int, progress: ProgressFn | None = None) -> str:
        """Fit a new context on every stored chunk with `seed` and re-embed them all."""
        from .chroma import rebuild_collection

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
        from .chroma import get_context

        context = get_context(collection)
        return (
            f"Re-fitted the context with seed {seed} on {context.source_size} chunks and "
            f"re-embedded {collection.count()} chunks in {time.perf_counter() - started:.1f} s "
            f"(fingerprint `{context.fingerprint[:12]}`)."
        )

    # -- asking ----------------------------------------------------------------------------

    def search(self, question: str, k: int | None = None) -> list[Source]:
        """The top `k` chunks for `question`, numbered 1..k as the answer cites them."""
        from .ingest import query_collection

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
        from .chroma import get_context

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


def _all_metadatas(collection: Collection) -> list[dict[str, Any] | None]:
    page = collection._client.get_max_batch_size()
    out: list[dict[str, Any] | None] = []
    offset = 0
    while True:
        got = collection.get(include=["metadatas"], limit=page, offset=offset)  # type: ignore[list-item]
        if not got["ids"]:
            return out
        out += got["metadatas"] or [None] * len(got["ids"])
        offset += len(got["ids"])


def _label(meta: dict[str, Any] | None) -> str:
    meta = meta or {}
    return f"{meta.get('source', '?')} #{meta.get('chunk', '?')}"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-!|>~<])")


def md_escape(text: str) -> str:
    """Show `text` literally in Markdown: no markup, no HTML (file names and document text
    come from whoever uploaded them)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _skipped_lines(skipped: Sequence[tuple[str, str]]) -> str:
    """One line per skipped file, by its uploaded name (upload folders are meaningless)."""
    if not skipped:
        return ""
    lines = [f"- {md_escape(Path(path).name)}: {md_escape(why)}" for path, why in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"- … and {len(skipped) - 20} more")
    return f"**Skipped {_count(len(skipped), 'file')}:**\n" + "\n".join(lines)


def warn_if_exposed(host: str) -> str | None:
    """A warning for a non-loopback bind: the demo has no login, and anyone who can reach the
    port can read the indexed documents and add their own."""
    if host in LOOPBACK:
        return None
    return (
        f"WARNING: binding the demo to {host!r} makes it reachable from other machines. It has "
        "no login: anyone who can reach this port can read your indexed documents and upload "
        "files. Use --host 127.0.0.1 unless you mean this."
    )


# -- the Gradio app ----------------------------------------------------------------------------

PHASES = {
    "load": "Reading files",
    "chunk": "Chunking",
    "context": "Fitting the corpus context",
    "store": "Embedding and storing chunks",
}
INTRO = """# cde-rag: chat over your documents
Drop in .txt, .md, .pdf or .html files and press **Index**: they are split into chunks, a
**corpus context** is fitted on the chunks (cde-small-v2 embeds every text *in the context of
your corpus*), and the chunks are embedded and stored in Chroma. Then ask a question: the answer
cites the retrieved chunks as [1], [2], listed under **Sources**."""
COMPARE_HELP = """**With vs. without the corpus context.** *With*: the stored vectors, and the
question embedded with the stored context. *Without*: the same chunks and question embedded with the
model's no-corpus fallback context (random strings). Rows are ranks; the two columns show which
chunk each context puts there."""
_UNITS = {"load": "files", "chunk": "documents", "context": "fits", "store": "chunks"}
SOURCE_HEADERS = ["#", "file", "chunk", "score", "text"]
COMPARE_HEADERS = ["rank", "with context", "score", "without context", "score "]
# Gradio serves its own fonts; system fonts first keeps the page light and fully offline.
CSS = """
#status, #context { min-height: 2em; }
#sources td, #comparison td { vertical-align: top; }
"""


def failure(exc: BaseException) -> str:
    """What the page says about an error: the message of a user error (bad file, bad input,
    unusable index); for anything else, its type, with the traceback on the demo's stderr."""
    from chromadb.errors import ChromaError

    if isinstance(exc, (CDEError, ValueError, OSError, ChromaError)):
        return str(exc)
    traceback.print_exception(exc, file=sys.stderr)
    return f"internal error ({type(exc).__name__}: {exc}); the demo's log has the details."


def _progress_adapter(progress: Any) -> ProgressFn:
    """Turn `index_paths`'s (phase, done, total) callbacks into Gradio progress-bar updates."""

    def report(phase: str, done: int, total: int) -> None:
        label = PHASES.get(phase, phase.capitalize())
        if total:
            progress((done, total), desc=label, unit=_UNITS.get(phase, "steps"))
        else:
            progress(None, desc=label)

    return report


def status_markdown(index: DemoIndex, message: str | None = None) -> str:
    """The status box: the last message, then what is indexed now (shared by all sessions)."""
    parts = [message] if message else []
    try:
        docs = index.documents()
    except CDEError as exc:
        return "\n\n".join([*parts, f"**Index unusable:** {md_escape(str(exc))}"])
    if docs:
        chunks = sum(n for _, n in docs)
        listing = "\n".join(f"- {md_escape(name)}: {_count(n, 'chunk')}" for name, n in docs[:30])
        more = f"\n- … and {len(docs) - 30} more files" if len(docs) > 30 else ""
        parts.append(
            f"**Indexed:** {_count(len(docs), 'file')}, {_count(chunks, 'chunk')}"
            f"\n\n{listing}{more}"
        )
    else:
        parts.append("**Nothing indexed yet.** Upload files, then press Index.")
    return "\n\n".join(parts)


def context_markdown(index: DemoIndex) -> str:
    """The context panel: what the stored context was fitted on, and its fingerprint."""
    try:
        context = index.context()
        count = index.collection().count() if context is not None else 0  # type: ignore[union-attr]
    except CDEError as exc:
        return f"**The stored context cannot be used:** {md_escape(str(exc))}"
    if context is None:
        return (
            f"No corpus context yet. The first indexing fits one on the chunks: "
            f"{index.model.corpus_size} of them (sampled with seed {index.seed}, with replacement "
            "when there are fewer) are embedded by the first stage of the model."
        )
    info = context.describe()
    lines = [
        f"**Model:** {md_escape(info['model'])} · **context fingerprint** `{info['fingerprint']}`",
        f"**Fitted on** {_count(info['source_size'] or 0, 'chunk')} (seed {info['seed']}): "
        f"the context holds N = {info['size']} minicorpus entries sampled from them "
        f"({info['unique_documents']} distinct) · created {info['created_at']}",
    ]
    if info["source_size"] is not None and count != info["source_size"]:
        lines.append(
            f"The collection now holds {_count(count, 'chunk')}; the context has seen "
            f"{info['source_size']}. Re-fit to include the newer ones (re-embeds all chunks)."
        )
    distinct = list(dict.fromkeys(context.minicorpus or ()))[:3]
    if distinct:
        quotes = "\n\n".join(f"> {md_escape(_clip(text, 160))}" for text in distinct)
        lines.append(f"**Minicorpus sample** ({len(distinct)} distinct entries):\n\n{quotes}")
    return "\n\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def source_rows(sources: Sequence[Source]) -> list[list[Any]]:
    return [[s.number, s.source, s.chunk, round(s.score, 4), s.text] for s in sources]


def chat_text(answer: Answer) -> str:
    """The chat message: extractive answers are quoted document text, so shown literally."""
    if answer.mode == "llm":
        return answer.text
    text = md_escape(answer.text)
    if answer.mode.startswith("extractive ("):
        text += f"\n\n*{md_escape(answer.mode)}*"
    elif answer.mode == "extractive":
        text += "\n\n*Extractive answer: the best-matching sentences of the sources below.*"
    return text


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_demo(
    index: DemoIndex, *, samples: Sequence[Path] = (), title: str = "cde-rag demo"
) -> gr.Blocks:
    """The demo's Blocks over a shared `DemoIndex`; per-session state lives in the components
    (chat history, sources) and one `gr.State` (the session's last question).

    `samples` are files on this machine offered by a button for a first try; they are indexed
    server-side and never served to the browser.
    """
    import gradio as gr

    def on_load() -> tuple[str, str]:
        return status_markdown(index), context_markdown(index)

    def on_index(
        paths: list[str] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> tuple:
        try:
            message = index.index_files(paths or [], progress=_progress_adapter(progress))
        except Exception as exc:
            message = f"**Indexing failed:** {md_escape(failure(exc))}"
        return status_markdown(index, message), context_markdown(index), None

    def on_samples(progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        return on_index([str(p) for p in samples], progress)

    def on_refit(
        seed: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[str, str]:
        seed_value = DEFAULT_SEED if seed is None else int(seed)
        try:
            message = index.refit(seed_value, progress=_progress_adapter(progress))
        except Exception as exc:
            message = f"**Re-fit failed:** {md_escape(failure(exc))}"
        return status_markdown(index, message), context_markdown(index)

    def on_ask(question: str, history: list[dict] | None, last: str | None) -> tuple:
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.")
        try:
            answer = index.answer(question)
        except Exception as exc:
            raise gr.Error(failure(exc)) from None
        history = [
            *(history or []),
            {"role": "user", "content": question},
            {"role": "assistant", "content": chat_text(answer)},
        ]
        return history, source_rows(answer.sources), "", question, question

    def on_compare(question: str, last: str | None) -> tuple:
        question = (question or last or "").strip()
        try:
            result = index.compare(question)
        except Exception as exc:
            raise gr.Error(failure(exc)) from None
        scope = (
            f"all {result.pool} chunks"
            if result.whole_collection
            else f"the {result.pool} best candidates of the stored index"
        )
        note = (
            f"Ranked {scope}. The two top-{result.k} lists share {result.overlap} of "
            f"{result.k} chunks."
        )
        return result.rows, note

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        last_question = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                files = gr.File(
                    label=f"Documents ({', '.join(SUPPORTED_SUFFIXES)})",
                    file_count="multiple",
                    file_types=list(SUPPORTED_SUFFIXES),
                    type="filepath",
                    elem_id="files",
                    height=160,
                )
                with gr.Row():
                    index_button = gr.Button("Index", variant="primary", elem_id="index")
                    sample_button = gr.Button(
                        f"Try {len(samples)} sample documents",
                        elem_id="samples",
                        visible=bool(samples),
                    )
                status = gr.Markdown(elem_id="status", label="Status", container=True)
            with gr.Column(scale=3, min_width=400):
                chatbot = gr.Chatbot(
                    label="Chat",
                    elem_id="chatbot",
                    height=320,
                    feedback_options=None,
                    buttons=["copy"],
                    placeholder="Ask about your documents once they are indexed.",
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask a question about your documents",
                        show_label=False,
                        elem_id="question",
                        scale=5,
                        max_length=2000,
                    )
                    ask = gr.Button("Ask", elem_id="ask", scale=1, min_width=80)
                sources = gr.Dataframe(
                    headers=SOURCE_HEADERS,
                    type="array",
                    label="Sources (cited as [n] in the answer)",
                    interactive=False,
                    wrap=True,
                    column_widths=["5%", "17%", "9%", "10%", "59%"],
                    elem_id="sources",
                    max_height=420,
                )
        gr.Markdown("## Corpus context")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                context = gr.Markdown(elem_id="context", container=True)
                with gr.Row():
                    seed = gr.Number(
                        value=index.seed, precision=0, label="Seed", elem_id="seed", minimum=0
                    )
                    refit = gr.Button(
                        "Re-fit context (re-embeds every chunk)", elem_id="refit", scale=2
                    )
            with gr.Column(scale=1):
                gr.Markdown(COMPARE_HELP)
                with gr.Row():
                    compare_question = gr.Textbox(
                        placeholder="Question (default: your last one)",
                        show_label=False,
                        elem_id="compare-question",
                        scale=4,
                        max_length=2000,
                    )
                    compare = gr.Button("Compare", elem_id="compare", scale=1, min_width=80)
                comparison = gr.Dataframe(
                    headers=COMPARE_HEADERS,
                    type="array",
                    interactive=False,
                    wrap=True,
                    elem_id="comparison",
                    label="Top chunks with and without the corpus context",
                )
                compare_note = gr.Markdown(elem_id="compare-note")

        demo.load(on_load, outputs=[status, context])
        # One indexing or re-fit at a time across all sessions (they share a concurrency id);
        # questions run in their own queue, so they stay answerable meanwhile.
        index_button.click(
            on_index,
            inputs=[files],
            outputs=[status, context, files],
            concurrency_limit=1,
            concurrency_id="index",
            show_progress="full",
        )
        sample_button.click(
            on_samples,
            outputs=[status, context, files],
            concurrency_limit=1,
            concurrency_id="index",
        )
        refit.click(
            on_refit,
            inputs=[seed],
            outputs=[status, context],
            concurrency_limit=1,
            concurrency_id="index",
        )
        ask_outputs = [chatbot, sources, question, compare_question, last_question]
        for trigger in (question.submit, ask.click):
            trigger(
                on_ask,
                inputs=[question, chatbot, last_question],
                outputs=ask_outputs,
                concurrency_limit=4,
                concurrency_id="ask",
            )
        compare.click(
            on_compare,
            inputs=[compare_question, last_question],
            outputs=[comparison, compare_note],
            concurrency_limit=2,
        )
    return demo


def launch_options(
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` that keep the demo private and bounded.

    No share link, no analytics or monitoring endpoint, no MCP server, nothing served beyond
    Gradio's own upload cache (no `allowed_paths`), the data folder explicitly blocked, and an
    upload size limit enforced by the server.
    """
    import gradio as gr

    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "inbrowser": False,
        "max_file_size": f"{int(max_file_mb)}mb",
        "allowed_paths": [],
        "blocked_paths": [str(Path(data_dir).expanduser().resolve())],
        "enable_monitoring": False,
        "mcp_server": False,
        "ssr_mode": False,
        "pwa": False,
        "show_error": True,
        "footer_links": ["api", "settings"],
        "theme": gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "monospace"],
        ),
        "css": CSS,
    }


def launch(
    demo: gr.Blocks,
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
    prevent_thread_lock: bool = False,
) -> gr.Blocks:
    """Start `demo` with `launch_options`; warns on stderr when bound beyond loopback."""
    warning = warn_if_exposed(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    demo.queue()
    demo.launch(
        prevent_thread_lock=prevent_thread_lock,
        **launch_options(data_dir, host=host, port=port, max_file_mb=max_file_mb),
    )
    return demo
