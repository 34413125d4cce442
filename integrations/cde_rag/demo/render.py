"""What the demo page says: Markdown for the status and context panels, the chat text and
the sources table, all built from `DemoIndex` results with no Gradio in it.

Everything shown comes from whoever uploaded the files (names, document text) or from an LLM
that may have read an injected document, so it is escaped or sanitised here, in one place.
"""

from __future__ import annotations

import html
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..answer import Source
from ..errors import CDEError

if TYPE_CHECKING:
    from .index import Answer, DemoIndex


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


def status_markdown(index: DemoIndex, message: str | None = None) -> str:
    """The status box: the last message, then what is indexed now (shared by all sessions)."""
    parts = [message] if message else []
    try:
        docs = index.documents()
    except CDEError as exc:
        return "\n\n".join([*parts, f"**Index unusable:** {md_escape(str(exc))}"])
    if docs:
        chunks = sum(n for _, n in docs)
        listing = "\n".join(f"- {md_escape(name)}: {count(n, 'chunk')}" for name, n in docs[:30])
        more = f"\n- … and {len(docs) - 30} more files" if len(docs) > 30 else ""
        parts.append(
            f"**Indexed:** {count(len(docs), 'file')}, {count(chunks, 'chunk')}\n\n{listing}{more}"
        )
    else:
        parts.append("**Nothing indexed yet.** Upload files, then press Index.")
    return "\n\n".join(parts)


def context_markdown(index: DemoIndex) -> str:
    """The context panel: what the stored context was fitted on, and its fingerprint."""
    try:
        context = index.context()
        stored = index.collection().count() if context is not None else 0  # type: ignore[union-attr]
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
        f"**Fitted on** {count(info['source_size'] or 0, 'chunk')} (seed {info['seed']}): "
        f"the context holds N = {info['size']} minicorpus entries sampled from them "
        f"({info['unique_documents']} distinct) · created {info['created_at']}",
    ]
    if info["source_size"] is not None and stored != info["source_size"]:
        lines.append(
            f"The collection now holds {count(stored, 'chunk')}; the context has seen "
            f"{info['source_size']}. Re-fit to include the newer ones (re-embeds all chunks)."
        )
    distinct = list(dict.fromkeys(context.minicorpus or ()))[:3]
    if distinct:
        quotes = "\n\n".join(f"> {md_escape(_clip(text, 160))}" for text in distinct)
        lines.append(f"**Minicorpus sample** ({len(distinct)} distinct entries):\n\n{quotes}")
    return "\n\n".join(lines)


def count(n: int, noun: str) -> str:
    """`n` and its noun, singular or plural."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def source_rows(sources: Sequence[Source]) -> list[list[Any]]:
    """The rows of the sources table, numbered as the answer cites them."""
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
