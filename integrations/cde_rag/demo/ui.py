"""The demo's page: the Gradio layout and its callbacks over a shared `DemoIndex`.

All logic lives in `DemoIndex` (`cde_rag.demo.index`) and all wording in `cde_rag.demo.render`;
this module only wires components to them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..context import DEFAULT_SEED
from ..documents import SUPPORTED_SUFFIXES
from .index import DemoIndex, ProgressFn
from .render import (
    chat_text,
    context_markdown,
    failure,
    md_escape,
    source_rows,
    status_markdown,
    text_html,
)

if TYPE_CHECKING:
    import gradio as gr

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
UPLOAD_EXPIRY = (3600, 86400)  # (check every, delete older than) in seconds
SOURCE_HEADERS = ["#", "file", "chunk", "score", "text"]
COMPARE_HEADERS = ["rank", "with context", "score", "without context", "score "]
# Gradio serves its own fonts; system fonts first keeps the page light and fully offline.
CSS = """
#status, #context { min-height: 2em; }
#sources td, #comparison td { vertical-align: top; }
"""


def discard_uploads(
    paths: Sequence[str | os.PathLike[str]], upload_folder: str | os.PathLike[str]
) -> list[Path]:
    """Delete the files Gradio stored for one upload, once they have been indexed; returns
    those deleted.

    Gradio keeps each upload as `<upload folder>/<content hash>/<file name>` until the server
    stops, so a long-running demo would keep every document ever dropped in. Only a regular
    file at exactly that place is deleted (never a link, never anything elsewhere), then its
    hash folder if that is left empty.
    """
    root = Path(upload_folder).resolve()
    removed = []
    for given in paths:
        path = Path(given)
        try:
            if path.is_symlink() or not path.is_file():
                continue
            real = path.resolve(strict=True)
            if real.parent.parent != root:
                continue
            real.unlink()
        except OSError:
            continue
        removed.append(path)
        with contextlib.suppress(OSError):
            real.parent.rmdir()  # only when empty
    return removed


def _progress_adapter(progress: Any) -> ProgressFn:
    """Turn `index_paths`'s (phase, done, total) callbacks into Gradio progress-bar updates."""

    def report(phase: str, done: int, total: int) -> None:
        label = PHASES.get(phase, phase.capitalize())
        if total:
            progress((done, total), desc=label, unit=_UNITS.get(phase, "steps"))
        else:
            progress(None, desc=label)

    return report


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

    def index_files(paths: Sequence[str | Path], progress: gr.Progress) -> tuple:
        try:
            message = index.index_files(paths, progress=_progress_adapter(progress))
        except Exception as exc:
            message = f"**Indexing failed:** {md_escape(failure(exc))}"
        return status_markdown(index, message), context_markdown(index), None

    def on_index(
        paths: list[str] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> tuple:
        from gradio.utils import get_upload_folder

        try:
            return index_files(paths or [], progress)
        finally:  # read into the index (or refused): Gradio's copies are no longer needed
            discard_uploads(paths or [], get_upload_folder())

    def on_samples(progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        return index_files(samples, progress)

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
            {"role": "user", "content": text_html(question)},
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

    # Uploads are deleted once indexed (`discard_uploads`); those never indexed expire after a
    # day, and all of this server's go when it stops.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=UPLOAD_EXPIRY) as demo:
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
                    # Messages arrive as inert HTML from `render` (see `llm_html`); Gradio
                    # sanitises them again. No Markdown or LaTeX of its own on top.
                    render_markdown=False,
                    sanitize_html=True,
                    latex_delimiters=[],
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
