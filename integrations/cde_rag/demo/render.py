"""What the demo page says: Markdown for the status and context panels, the chat text and
the sources table, all built from `DemoIndex` results with no Gradio in it.

Everything shown comes from whoever uploaded the files (names, document text) or from an LLM
that may have read an injected document, so it is escaped or sanitised here, in one place.
"""

from __future__ import annotations

import functools
import html
import re
import sys
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..answer import Source
from ..drift import DEFAULT_SAMPLE as DRIFT_SAMPLE
from ..errors import CDEError

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

    from .index import Answer, Comparison, DemoIndex, IndexedFile


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-!|>~<])")


def md_escape(text: str) -> str:
    """Show `text` literally in Markdown: no markup, no HTML (file names and document text
    come from whoever uploaded them)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def skipped_lines(skipped: Sequence[tuple[str, str]]) -> str:
    """One line per skipped file, by its uploaded name (upload folders are meaningless)."""
    if not skipped:
        return ""
    lines = [f"- {md_escape(Path(path).name)}: {md_escape(why)}" for path, why in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"- … and {len(skipped) - 20} more")
    return f"**Skipped {count(len(skipped), 'file')}:**\n" + "\n".join(lines)


def failure(exc: BaseException) -> str:
    """What the page says about an error: the message of a user error (bad file, bad input,
    unusable index); for anything else, its type, with the traceback on the demo's stderr."""
    from chromadb.errors import ChromaError

    if isinstance(exc, (CDEError, ValueError, OSError, ChromaError)):
        return str(exc)
    traceback.print_exception(exc, file=sys.stderr)
    return f"internal error ({type(exc).__name__}: {exc}); the demo's log has the details."


def status_markdown(
    index: DemoIndex, message: str | None = None, files: Sequence[IndexedFile] | None = None
) -> str:
    """The status box: the last message, then how much is indexed now (shared by all
    sessions; the files themselves are in the files table, `file_rows`). `files` saves
    reading them again when the caller has them."""
    parts = [message] if message else []
    try:
        files = index.files() if files is None else files
    except CDEError as exc:
        return "\n\n".join([*parts, f"**Index unusable:** {md_escape(str(exc))}"])
    if files:
        chunks = sum(f.chunks for f in files)
        parts.append(f"**Indexed:** {count(len(files), 'file')}, {count(chunks, 'chunk')}")
    else:
        parts.append("**Nothing indexed yet.** Upload files, then press Index.")
    return "\n\n".join(parts)


def file_rows(files: Sequence[IndexedFile]) -> list[list[Any]]:
    """The indexed-files table: name, chunks, when this version was stored (local time)."""
    return [[f.name, f.chunks, _when(f)] for f in files]


def _when(file: IndexedFile) -> str:
    if not file.complete:
        return "unfinished: index it again"
    if file.indexed_at is None:
        return "not recorded"
    return datetime.fromtimestamp(file.indexed_at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def context_markdown(index: DemoIndex) -> str:
    """The context panel: what the stored context was fitted on, its fingerprint, and how
    stale it is (counts since the fit, the last drift measured)."""
    try:
        context = index.context()
        status = index.status() if context is not None else None
    except CDEError as exc:
        return f"**The stored context cannot be used:** {md_escape(str(exc))}"
    if context is None or status is None:
        return (
            f"No corpus context yet. The first indexing fits one on the chunks: "
            f"{index.model.corpus_size} of them (sampled with seed {index.seed}, with replacement "
            "when there are fewer) are embedded by the first stage of the model."
        )
    info = context.describe()
    lines = [
        f"**Model:** {md_escape(model_label(info['model']))} · **context fingerprint** "
        f"`{info['fingerprint']}`",
        f"**Fitted on** {count(info['source_size'] or 0, 'chunk')} (seed {info['seed']}): "
        f"the context holds N = {info['size']} minicorpus entries sampled from them "
        f"({info['unique_documents']} distinct) · created {info['created_at']}",
        staleness_markdown(status),
    ]
    distinct = list(dict.fromkeys(context.minicorpus or ()))[:3]
    if distinct:
        quotes = "\n\n".join(f"> {md_escape(_clip(text, 160))}" for text in distinct)
        lines.append(
            f"**Minicorpus sample**, as fitted ({len(distinct)} distinct entries):\n\n{quotes}"
        )
    return "\n\n".join(lines)


def staleness_markdown(status: dict[str, Any]) -> str:
    """How stale the context is, in plain words, from `DemoIndex.status()` (the fields of
    `cde_rag.chroma.ContextStatus.to_dict()`)."""
    records = count(status["records"], "chunk")
    if status["added"] is None or status["fitted_on"] is None:
        since = (
            f"**Since the fit:** the index holds {records} now; changes since the fit were not "
            "counted (the index predates that). A re-fit starts the count."
        )
    else:
        since = (
            f"**Since the fit:** fitted on {count(status['fitted_on'], 'chunk')}, the index "
            f"holds {records} now: {status['added']} added, {status['removed']} removed."
        )
    if status["drift"] is None:
        drift = (
            "**Drift:** not measured for this context yet. **Check drift** runs the first "
            f"stage of the model on up to {DRIFT_SAMPLE} stored chunks and compares them with "
            "the minicorpus."
        )
    else:
        measured = (
            f"**Drift:** {status['drift']:.3f} on a sample of {count(status['sampled'], 'chunk')} "
            f"(a re-fit is recommended above {status['threshold']})"
        )
        if status["refit_recommended"]:
            advice = (
                "**Re-fit recommended:** the documents have moved away from what the context "
                "was fitted on. Press **Re-fit context**: it re-embeds every chunk, and "
                "questions are answered meanwhile."
            )
        else:
            advice = "The context still fits the documents: no re-fit needed."
        drift = f"{measured}. {advice}"
        if status.get("drift_outdated"):
            drift += " *Measured before the latest changes: check drift again.*"
    return f"{since}\n\n{drift}"


def model_label(name: str) -> str:
    """A model as the page names it: a hub id as is, a checkpoint folder by its own name (its
    full path says nothing to others and tells them about this machine)."""
    path = Path(name)
    return f"{path.name} (local checkpoint)" if path.is_absolute() else name


def count(n: int, noun: str) -> str:
    """`n` and its noun, singular or plural."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def source_rows(sources: Sequence[Source]) -> list[list[Any]]:
    """The rows of the sources table, numbered as the answer cites them: number, where the
    chunk comes from (file, chunk, score) and its text. Three columns stay readable on a
    phone; five did not."""
    return [[s.number, f"{s.source} #{s.chunk} ({s.score:.3f})", s.text] for s in sources]


def comparison_rows(result: Comparison) -> list[list[Any]]:
    """The comparison table: rank, then each context's chunk there with its score."""
    return [
        [rank, f"{with_label} ({with_score:.3f})", f"{without_label} ({without_score:.3f})"]
        for rank, with_label, with_score, without_label, without_score in result.rows
    ]


def chat_text(answer: Answer) -> str:
    """The chat message, as HTML (the chat shows HTML, never Markdown of its own): an LLM's
    Markdown made inert by `llm_html`; extractive answers are quoted document text, shown
    literally."""
    if answer.mode == "llm":
        return llm_html(answer.text)
    if answer.mode.startswith("extractive (LLM failed: "):
        reason = answer.mode.removeprefix("extractive (LLM failed: ").removesuffix(")")
        note = f"The LLM could not answer ({reason}), so these are the best-matching sentences."
    elif answer.mode == "extractive":
        note = "Extractive answer: the best-matching sentences of the sources below."
    else:
        return text_html(answer.text)
    return f"{text_html(answer.text, paragraphs=True)}<p><em>{html.escape(note)}</em></p>"


def text_html(text: str, *, paragraphs: bool = False) -> str:
    """Plain text as HTML: every character shown as typed, nothing interpreted. Blank-line
    separated paragraphs become <p> elements when there are several, or when asked."""
    parts = [p.strip() for p in _PARAGRAPH.split(text.strip()) if p.strip()]
    escaped = [html.escape(p, quote=False).replace("\n", "<br>") for p in parts]
    if len(escaped) == 1 and not paragraphs:
        return escaped[0]
    return "".join(f"<p>{p}</p>" for p in escaped)


def llm_html(markdown: str) -> str:
    """An LLM's Markdown as HTML that cannot fetch, post or run anything.

    The LLM read retrieved documents, and a planted one can make it write markup: an image
    whose address carries the retrieved text to another site (the browser fetches it
    unasked), a password form, a script. So raw HTML is shown as text, images become a text
    note naming their address, and only http(s) and mailto links are links, opening in a new
    tab without access to this page (`rel="noopener noreferrer nofollow"`). Gradio's own
    sanitiser runs on the result too.
    """
    return _markdown().render(markdown)


_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_LINK_REL = "noopener noreferrer nofollow"


@functools.cache
def _markdown() -> MarkdownIt:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    # Anything else (javascript:, data:, relative paths into this server) stays literal text.
    md.validateLink = lambda url: url.strip().lower().startswith(_LINK_SCHEMES)  # type: ignore[method-assign]
    md.add_render_rule("image", _image_as_text)
    md.add_render_rule("link_open", _safe_link_open)
    return md


def _image_as_text(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    note = f"[image not shown: {alt or 'no description'}, {_clip(token.attrGet('src') or '', 100)}]"
    return f"<em>{html.escape(note, quote=False)}</em>"


def _safe_link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("rel", _LINK_REL)
    tokens[idx].attrSet("target", "_blank")
    return self.renderToken(tokens, idx, options, env)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
