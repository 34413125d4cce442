"""Turn a file's bytes into clean text by its type (text, HTML, PDF), within caps on the work.

Whatever a parser raises for a damaged or hostile file becomes that file's `DocumentError`,
and no file may cost more than its caps allow: HTML is read in one pass whatever its nesting,
a PDF's page tree is walked with a bound and its text extraction stops at the character cap.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DocumentError

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf", ".html", ".htm")
_KINDS = {
    ".txt": "text file",
    ".md": "text file",
    ".pdf": "PDF",
    ".html": "HTML file",
    ".htm": "HTML file",
}
# C0 and C1 control characters except tab and newline, DEL, and the two non-characters that
# some tools choke on. Carriage returns are normalised to newlines before this runs.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]")
# Control characters that never occur in real text files; above a few of them and this share
# of the text, a "text" file is binary data, not text with some noise.
_BINARY_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")
_BINARY_CONTROL_RATIO = 0.05
_BINARY_CONTROL_MIN = 8
# Block elements end a paragraph (a blank line); the _HTML_LINES ones end a line.
_HTML_BLOCKS = re.compile(
    r"^(address|article|aside|blockquote|br|d[dlt]|div|figcaption|footer|h[1-6]|header|hr|li"
    r"|main|nav|ol|p|pre|section|table|t[dhr]|ul)$"
)
_HTML_LINES = ("br", "dd", "dt", "li", "td", "th", "tr")
# Elements whose content a browser does not show as text.
_HIDDEN_TAGS = frozenset({"script", "style", "noscript", "template", "head"})
_WHITESPACE = re.compile(r"\s+")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


@dataclass(frozen=True)
class Limits:
    """Caps on the work one file may cause (see `load_document`)."""

    bytes: int
    pages: int
    chars: int


def extract_text(suffix: str, data: bytes, meta: dict[str, Any], limits: Limits) -> str:
    """The clean text of a file of type `suffix` (one of `SUPPORTED_SUFFIXES`), or
    `DocumentError`; `meta` receives what was learnt (encoding, title, pages)."""
    text = clean_text(_parse(suffix, data, meta, limits))
    if len(text) > limits.chars:
        raise _too_much_text(limits.chars, f"{len(text):,} characters")
    return text


def _too_much_text(max_chars: int, found: str) -> DocumentError:
    return DocumentError(
        f"text is over the {max_chars:,}-character limit ({found}); split the file or raise "
        "the limit (max_chars; cde-rag index --max-chars)"
    )


def _parse(suffix: str, data: bytes, meta: dict[str, Any], limits: Limits) -> str:
    """The file's raw text by its type; whatever its parser raises is this file's `DocumentError`.

    Parsers of damaged files raise almost anything (bs4's ParserRejectedMarkup; struct, zlib
    and key errors from deep inside pypdf...): all of them mean this one file cannot be read,
    never that a run over many files should stop.
    """
    kind = _KINDS[suffix]
    try:
        if suffix == ".pdf":
            return _pdf_text(data, meta, limits)
        if suffix in (".html", ".htm"):
            return _html_text(data, meta)
        return _decode_text(data, meta)
    except DocumentError:
        raise
    except (RecursionError, MemoryError, NotImplementedError) as exc:
        raise DocumentError(f"{kind} too complex or unsupported ({type(exc).__name__})") from None
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DocumentError(f"not a readable {kind} ({type(exc).__name__}: {detail})") from None


def clean_text(text: str) -> str:
    """Normalise newlines, drop control characters, and squeeze runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\v", "\n")
    text = _CONTROL.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _decode_text(data: bytes, meta: dict[str, Any]) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, else a legacy 8-bit encoding.

    Broken UTF-8 (a few bad bytes among valid multibyte sequences) keeps its valid text and
    gets U+FFFD for the bad bytes; files with no valid multibyte sequence at all are read as
    Windows-1252, the usual source of non-UTF-8 text.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text, encoding = data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise DocumentError("has a UTF-16 byte-order mark but is not valid UTF-16") from None
    else:
        if b"\x00" in data:
            raise DocumentError("binary data (contains NUL bytes), not text")
        try:
            text, encoding = data.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace")
            if any(ord(ch) > 0x7F and ch != "\ufffd" for ch in text):
                encoding = "utf-8 (invalid bytes replaced)"
            else:
                text, encoding = data.decode("cp1252", "replace"), "cp1252"
    _refuse_binary(text)
    meta["encoding"] = encoding
    return text


def _refuse_binary(text: str) -> None:
    controls = len(_BINARY_CONTROL.findall(text))
    if controls > max(_BINARY_CONTROL_MIN, _BINARY_CONTROL_RATIO * len(text)):
        raise DocumentError(f"binary data ({controls} control characters in {len(text)}), not text")


def _html_text(data: bytes, meta: dict[str, Any]) -> str:
    from bs4 import BeautifulSoup

    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError("binary data (contains NUL bytes), not HTML")
    soup = BeautifulSoup(data, "html.parser")
    if soup.title is not None:
        meta["title"] = clean_text(_WHITESPACE.sub(" ", soup.title.get_text(" ")))[:200]
    text = _visible_text(soup)
    _refuse_binary(text)
    meta["encoding"] = soup.original_encoding or "utf-8"
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())


def _visible_text(root: Any) -> str:
    """The text a browser shows: no doctype, comments, CDATA, processing instructions, scripts
    or styles. Paragraphs stay apart (the splitter cuts there first), inline tags stay within
    their line, and source line breaks are spaces except in <pre>.

    One pass over the tree with an explicit stack: deep nesting costs what the file's size
    says (looking up each string's ancestors made thousands of nested tags quadratic).
    """
    from bs4.element import NavigableString, RubyParenthesisString, RubyTextString, Tag

    visible = (NavigableString, RubyTextString, RubyParenthesisString)  # not its subclasses
    parts: list[str] = []
    in_pre = 0
    # For each open tag: its children still to visit, what follows it, whether it is a <pre>.
    stack: list[tuple[Iterator[Any], str, bool]] = [(iter(root.contents), "", False)]
    while stack:
        node = next(stack[-1][0], None)
        if node is None:
            _, after, pre = stack.pop()
            parts.append(after)
            in_pre -= pre
        elif isinstance(node, Tag):
            if node.name not in _HIDDEN_TAGS:
                pre = node.name == "pre"
                in_pre += pre
                after = ""
                if _HTML_BLOCKS.match(node.name):
                    after = "\n" if node.name in _HTML_LINES else "\n\n"
                stack.append((iter(node.contents), after, pre))
        elif type(node) in visible:
            parts.append(node if in_pre else _WHITESPACE.sub(" ", node))
    return "".join(parts)


def _pdf_text(data: bytes, meta: dict[str, Any], limits: Limits) -> str:

    from pypdf import PdfReader

    # pypdf logs a warning for every quirk of a damaged PDF; the reason we raise is enough.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not _decrypts_without_password(reader):
        raise DocumentError(
            "encrypted PDF; save an unencrypted copy (e.g. print to PDF) and index that"
        )
    _check_page_tree(reader, limits.pages)
    pages: list[str] = []
    extracted = 0

    def tally(fragment: str, *_: Any) -> None:
        """Stop inside a page as soon as the file's text passes the cap."""
        nonlocal extracted
        extracted += len(fragment)
        if extracted > limits.chars:
            where = f"stopped at page {len(pages) + 1:,} of {len(reader.pages):,}"
            raise _too_much_text(limits.chars, where)

    for page in reader.pages:
        pages.append(page.extract_text(visitor_text=tally) or "")
    meta["pages"] = len(pages)
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise DocumentError("PDF has no extractable text (scanned images?); run OCR on it first")
    return text


def _check_page_tree(reader: Any, max_pages: int) -> None:
    """Count the pages by walking the page tree, stopping past `max_pages`, before pypdf
    builds a page object for every reference: a tree that lists the same node twice at each
    of 15 levels is 3 KB and claims 32,768 pages; one that loops never ends."""
    from pypdf.generic import DictionaryObject

    stack = [reader.trailer["/Root"].get("/Pages")]
    pages = nodes = 0
    while stack:
        node = stack.pop()
        node = node.get_object() if node is not None else None
        if not isinstance(node, DictionaryObject):
            continue  # pypdf decides what a damaged entry means
        kind = node.get("/Type", "/Pages" if "/Kids" in node else "/Page")
        if kind == "/Page":
            pages += 1
            if pages > max_pages:
                raise DocumentError(
                    f"PDF has more pages than the {max_pages:,}-page limit; split it or raise "
                    "the limit (max_pages; cde-rag index --max-pages)"
                )
        elif kind == "/Pages":
            nodes += 1
            if nodes > max_pages + 1000:  # a tree of that many pages needs fewer nodes
                raise DocumentError(f"PDF page tree has over {nodes - 1:,} nodes or loops")
            stack.extend(node.get("/Kids") or ())


def _decrypts_without_password(reader: Any) -> bool:
    """Many PDFs are 'encrypted' with an empty user password; those open fine."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # missing crypto backend, unsupported algorithm: treat as locked
        return False
