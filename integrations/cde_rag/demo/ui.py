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
from ..errors import CDEError
from .index import DemoIndex, ProgressFn
from .render import (
    chat_text,
    comparison_rows,
    context_markdown,
    failure,
    file_rows,
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
    "remove": "Removing chunks",
    "drift": "Measuring drift (the first stage on a sample of chunks)",
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
_UNITS = {"load": "files", "chunk": "documents", "store": "chunks", "remove": "chunks"}
# Phases reported only as started and done: their bar shows a share, never "0/1".
_WHOLE_PHASES = {"context", "drift"}
MAX_QUESTION_CHARS = 2000
# Characters of a chunk shown in the sources table (a click shows all): several rows fit.
SOURCE_TEXT_CHARS = 180
UPLOAD_EXPIRY = (3600, 86400)  # (check every, delete older than) in seconds
SOURCE_HEADERS = ["#", "file #chunk (score)", "text"]
FILE_HEADERS = ["file", "chunks", "indexed"]
COMPARE_HEADERS = ["rank", "with context", "without context"]
# Gradio serves its own fonts; system fonts first keeps the page light and fully offline.
# Indexing progress shows in the status box alone: the box is tall enough for it, and the
# overlay fills the box and hides the old status (Gradio draws a Markdown's overlay
# see-through, over the text).
CSS = """
#status { min-height: 7.5em; }
#status > .wrap.center, #context > .wrap.center {
  bottom: 0; background: var(--block-background-fill);
}
#context { min-height: 2em; }
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
    """Turn `DemoIndex`'s (phase, done, total) callbacks into Gradio progress-bar updates.

    Fitting reports only its start and end; its real progress, the model's batches over the
    minicorpus, comes from the model's tqdm bar, which Gradio follows while the fit runs
    (`_follow_tqdm`). The other phases report their own steps, so tqdm bars made meanwhile
    (Chroma's, the embedding batches) are not shown on top.
    """

    def report(phase: str, done: int, total: int) -> None:
        label = PHASES.get(phase, phase.capitalize())
        fitting = phase == "context" and done < total
        _follow_tqdm(progress if fitting else None)
        if phase in _WHOLE_PHASES:  # a share, not "0/1": the fit's batches fill in between
            progress(done / total if total else 0.0, desc=label)
        elif total:
            progress((done, total), desc=label, unit=_UNITS.get(phase, "steps"))
        else:
            progress(None, desc=label)

    return report


def _follow_tqdm(progress: Any) -> None:
    """Have `gr.Progress(track_tqdm=True)` follow the tqdm bars this event creates from now
    on (`progress`), or none (None). Gradio keeps the tracker in a context variable that it
    sets for the whole event; without it (another Gradio), every bar is followed."""
    try:
        from gradio.context import LocalContext
    except ImportError:  # Gradio moved it: every bar is followed
        return
    LocalContext.progress.set(progress)


def build_demo(
    index: DemoIndex, *, samples: Sequence[Path] = (), title: str = "cde-rag demo"
) -> gr.Blocks:
    """The demo's Blocks over a shared `DemoIndex`; per-session state lives in the components
    (chat history, sources) and one `gr.State` (the session's last question).

    `samples` are files on this machine offered by a button for a first try; they are indexed
    server-side and never served to the browser.
    """
    import gradio as gr

    def index_view(message: str | None = None) -> tuple:
        """The status box, the context panel, the files table and the files one can remove,
        as the shared index is now."""
        try:
            files = index.files()
        except CDEError:  # the status box says why
            files, status = [], status_markdown(index, message)
        else:
            status = status_markdown(index, message, files)
        choices = [f.name for f in files]
        return (
            status,
            context_markdown(index),
            file_rows(files),
            gr.update(choices=choices, value=None),
        )

    def on_load() -> tuple:
        return index_view()

    def index_files(paths: Sequence[str | Path], progress: gr.Progress) -> tuple:
        try:
            message = index.index_files(paths, progress=_progress_adapter(progress))
        except Exception as exc:
            message = f"**Indexing failed:** {md_escape(failure(exc))}"
        return (*index_view(message), None)

    def on_index(
        paths: list[str] | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ) -> tuple:
        from gradio.utils import get_upload_folder

        try:
            return index_files(paths or [], progress)
        finally:  # read into the index (or refused): Gradio's copies are no longer needed
            discard_uploads(paths or [], get_upload_folder())

    def on_samples(
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ) -> tuple:
        return index_files(samples, progress)

    def on_remove(
        name: str | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ) -> tuple:
        try:
            message = index.remove_file(name or "", progress=_progress_adapter(progress))
        except Exception as exc:
            message = f"**Removing failed:** {md_escape(failure(exc))}"
        return index_view(message)

    def on_refit(
        seed: float | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ) -> tuple:
        seed_value = DEFAULT_SEED if seed is None else int(seed)
        try:
            message = index.refit(seed_value, progress=_progress_adapter(progress))
        except Exception as exc:
            message = f"**Re-fit failed:** {md_escape(failure(exc))}"
        return index_view(message)

    def on_check_drift(
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom)
    ) -> str:
        try:
            index.check_drift(progress=_progress_adapter(progress))
        except Exception as exc:
            return f"**Checking drift failed:** {md_escape(failure(exc))}"
        return context_markdown(index)

    valid = gr.validate(True, "")

    def check_question(question: str | None, *others: Any) -> list[dict]:
        """Runs in the browser's request before `on_ask`: an empty question is marked on the
        input, and nothing else changes (no error badges on the chat or the sources)."""
        asked = bool((question or "").strip())
        return [gr.validate(asked, "Type a question first."), *(valid for _ in others)]

    def check_compare(question: str | None, last: str | None) -> list[dict]:
        asked = bool((question or last or "").strip())
        return [gr.validate(asked, "Type a question to compare, or ask one first."), valid]

    def on_ask(question: str, history: list[dict] | None, last: str | None) -> Any:
        question = (question or "").strip()
        try:
            answer = index.answer(question)
        except Exception as exc:  # shown once, as a notice; the chat stays as it was
            gr.Warning(failure(exc))
            return gr.skip()
        history = [
            *(history or []),
            {"role": "user", "content": text_html(question)},
            {"role": "assistant", "content": chat_text(answer)},
        ]
        return history, source_rows(answer.sources), "", question, question

    def on_compare(question: str, last: str | None) -> tuple:
        try:
            result = index.compare(question or last or "")
        except Exception as exc:
            return [], f"**Cannot compare:** {md_escape(failure(exc))}"
        scope = (
            f"all {result.pool} chunks"
            if result.whole_collection
            else f"the {result.pool} best candidates of the stored index"
        )
        note = (
            f"Ranked {scope}. The two top-{result.k} lists share {result.overlap} of "
            f"{result.k} chunks."
        )
        return comparison_rows(result), note

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
                file_table = _table(
                    FILE_HEADERS,
                    "Indexed files (upload a changed file under its name to replace it)",
                    ["40%", "24%", "36%"],
                    "indexed-files",
                    max_height=300,
                )
                with gr.Row():
                    remove_choice = gr.Dropdown(
                        choices=[],
                        value=None,
                        label="File to remove",
                        elem_id="remove-file",
                        scale=3,
                    )
                    remove = gr.Button("Remove file", elem_id="remove", scale=1, min_width=80)
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
                question, ask = _question_row(
                    "Question", "Ask a question about your documents", "question", "Ask", "ask"
                )
                sources = _table(
                    SOURCE_HEADERS,
                    "Sources (cited as [n] in the answer; click a text for all of it)",
                    ["7%", "25%", "68%"],
                    "sources",
                    max_chars=SOURCE_TEXT_CHARS,
                    max_height=420,
                )
        gr.Markdown("## Corpus context")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                context = gr.Markdown(elem_id="context", container=True)
                with gr.Row():
                    check_drift = gr.Button("Check drift", elem_id="check-drift", scale=1)
                    seed = gr.Number(
                        value=index.seed, precision=0, label="Seed", elem_id="seed", minimum=0
                    )
                    refit = gr.Button(
                        "Re-fit context (re-embeds every chunk)", elem_id="refit", scale=2
                    )
            with gr.Column(scale=1):
                gr.Markdown(COMPARE_HELP)
                compare_question, compare = _question_row(
                    "Question to compare",
                    "Question (default: your last one)",
                    "compare-question",
                    "Compare",
                    "compare",
                )
                comparison = _table(
                    COMPARE_HEADERS,
                    "Top chunks with and without the corpus context",
                    ["14%", "43%", "43%"],
                    "comparison",
                )
                compare_note = gr.Markdown(elem_id="compare-note")

        view = [status, context, file_table, remove_choice]
        demo.load(on_load, outputs=view)
        # One indexing or re-fit at a time across all sessions (they share a concurrency id);
        # questions run in their own queue, so they stay answerable meanwhile. Progress
        # shows in the status box only, not over every panel the result updates.
        indexing: dict[str, Any] = {
            "concurrency_limit": 1,
            "concurrency_id": "index",
            "show_progress_on": [status],
        }
        index_button.click(on_index, inputs=[files], outputs=[*view, files], **indexing)
        sample_button.click(on_samples, outputs=[*view, files], **indexing)
        remove.click(on_remove, inputs=[remove_choice], outputs=view, **indexing)
        refit.click(on_refit, inputs=[seed], outputs=view, **indexing)
        # Drift is measured on demand: it runs the first stage on a sample of chunks, and it
        # changes only when the documents do, so page loads and indexing do not pay for it.
        # It only reads the index, so it runs beside indexing, one measurement at a time.
        check_drift.click(
            on_check_drift,
            outputs=[context],
            concurrency_limit=1,
            concurrency_id="drift",
            show_progress_on=[context],
        )
        ask_outputs = [chatbot, sources, question, compare_question, last_question]
        for trigger in (question.submit, ask.click):
            trigger(
                on_ask,
                inputs=[question, chatbot, last_question],
                outputs=ask_outputs,
                validator=check_question,
                concurrency_limit=4,
                concurrency_id="ask",
                show_progress_on=[chatbot],
            )
        for trigger in (compare_question.submit, compare.click):
            trigger(
                on_compare,
                inputs=[compare_question, last_question],
                outputs=[comparison, compare_note],
                validator=check_compare,
                concurrency_limit=2,
                show_progress_on=[comparison],
            )
    return demo


def _table(
    headers: list[str], label: str, widths: list[str], elem_id: str, **options: Any
) -> gr.Dataframe:
    """A read-only table of rows the page fills in (text wraps)."""
    import gradio as gr

    return gr.Dataframe(
        headers=headers,
        type="array",
        label=label,
        interactive=False,
        wrap=True,
        column_widths=widths,
        elem_id=elem_id,
        **options,
    )


def _question_row(
    label: str, placeholder: str, elem_id: str, button: str, button_id: str
) -> tuple[gr.Textbox, gr.Button]:
    """A one-line question box and its button. The label is not shown; it names the box in
    a validation message."""
    import gradio as gr

    with gr.Row():
        box = gr.Textbox(
            label=label,
            placeholder=placeholder,
            show_label=False,
            elem_id=elem_id,
            scale=4,
            max_length=MAX_QUESTION_CHARS,
        )
        return box, gr.Button(button, elem_id=button_id, scale=1, min_width=80)
