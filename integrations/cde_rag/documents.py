"""Load files into text documents and split them into chunks with stable ids.

People point RAG tools at messy folders. Everything here turns a bad file into a clear reason
in `LoadResult.skipped` instead of an exception, so one broken PDF never stops an indexing run,
and chunk ids are derived from content so running ingestion again yields the same ids.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import CDEError
from .splitting import split_spans

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf", ".html", ".htm")
_KINDS = {
    ".txt": "text file",
    ".md": "text file",
    ".pdf": "PDF",
    ".html": "HTML file",
    ".htm": "HTML file",
}
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# A PDF's work is not bounded by its size (a 3 KB page tree can claim 32,768 pages, a 270 KB
# file reusing one content stream on every page yields 20 MB of text), so pages and extracted
# characters are capped too: far above a long book, far below what makes indexing hang.
DEFAULT_MAX_PAGES = 5_000
DEFAULT_MAX_CHARS = 10_000_000
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 150

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


class DocumentError(CDEError, ValueError):
    """A file cannot be turned into text (binary, empty, encrypted, too large, unreadable)."""


@dataclass(frozen=True)
class Document:
    """The text of one file; `source` is the short, printable name shown to users."""

    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document; `id` depends only on source, position and text."""

    id: str
    text: str
    source: str
    index: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadResult:
    """Documents that loaded, and `(path, reason)` for everything that did not."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- loading one file -------------------------------------------------------------------------


def load_document(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Document:
    """Read a .txt/.md/.pdf/.html file into clean text, or raise `DocumentError` saying why not.

    `source` overrides the name recorded for the document (e.g. the original name of an
    uploaded file); by default it is the file name. Files over `max_bytes`, PDFs over
    `max_pages` and texts over `max_chars` are refused; a PDF stops being read as soon as it
    passes either cap.
    """
    return _load(_Entry(Path(path), source), Limits(max_bytes, max_pages, max_chars))


@dataclass(frozen=True)
class Limits:
    """Caps on the work one file may cause (see `load_document`)."""

    bytes: int
    pages: int
    chars: int


class _Entry(NamedTuple):
    """A file to read. `expect` is the (device, inode) a folder walk saw at `path`, and `link`
    whether it saw a symlink there (then the link is followed, to that same file only)."""

    path: Path
    source: str | None
    expect: tuple[int, int] | None = None
    link: bool = True


def _load(entry: _Entry, limits: Limits) -> Document:
    file = entry.path
    suffix = file.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"unsupported file type {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    data = _read_bytes(entry, limits.bytes)
    if not data.strip():
        raise DocumentError("empty file")
    meta: dict[str, Any] = {"type": suffix.lstrip("."), "bytes": len(data)}
    text = clean_text(_extract(suffix, data, meta, limits))
    if len(text) > limits.chars:
        raise _too_much_text(limits.chars, f"{len(text):,} characters")
    if not text.strip():
        raise DocumentError("no text left after removing control characters and whitespace")
    name = display_name(entry.source if entry.source is not None else file.name)
    return Document(text=text, source=name, metadata={"source": name, **meta})


def _too_much_text(max_chars: int, found: str) -> DocumentError:
    return DocumentError(
        f"text is over the {max_chars:,}-character limit ({found}); split the file or raise "
        "the limit (max_chars; cde-rag index --max-chars)"
    )


def _extract(suffix: str, data: bytes, meta: dict[str, Any], limits: Limits) -> str:
    """The file's text by its type; whatever its parser raises is this file's `DocumentError`.

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


def display_name(name: str) -> str:
    """A printable, valid-UTF-8 version of a file name (undecodable bytes become U+FFFD)."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    name = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in name
    )
    return name.strip() or "unnamed"


def _read_bytes(entry: _Entry, max_bytes: int) -> bytes:
    """The file's bytes, checked on the opened file rather than its path, so what a folder
    walk vetted is what is read even if the path is swapped meanwhile."""
    # Non-blocking, so a FIFO or device put in the file's place cannot hang the open.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if not entry.link:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(entry.path, flags)
    except FileNotFoundError:
        raise DocumentError("no such file") from None
    except PermissionError:
        raise DocumentError("permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not entry.link:
            raise DocumentError(
                "became a symlink after the folder was listed; not followed"
            ) from None
        raise DocumentError(f"cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            # FIFOs and devices would block or never end; folders are walked by load_documents.
            raise DocumentError("not a regular file")
        if entry.expect is not None and (info.st_dev, info.st_ino) != entry.expect:
            raise DocumentError("changed after the folder was listed (replaced or moved); not read")
        if info.st_size > max_bytes:
            raise DocumentError(
                f"file is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit; split it or "
                "raise the limit (max_bytes; cde-rag index --max-mb)"
            )
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise DocumentError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise DocumentError(f"file grew past the {max_bytes:,}-byte limit while being read")
    return data


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
    import io

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


# -- loading many files -----------------------------------------------------------------------


def load_documents(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    recursive: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_chars: int = DEFAULT_MAX_CHARS,
    progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Load files and folders; never raises for a bad file, it lands in `skipped` instead.

    Folders are walked in sorted order (only one level unless `recursive`); hidden entries are
    skipped, and symlinks are followed only when they resolve inside the folder being walked,
    so a link cannot pull `/etc` into an index. A file's source is `<folder name>/<path in
    folder>` for walked files and its file name for files given directly, which keeps chunk
    ids the same whichever way the folder is spelled on the command line.
    `progress(done, total)` is called as files are read. The caps are `load_document`'s.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result = LoadResult()
    entries: list[_Entry] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            _walk(path, recursive, entries, result.skipped)
        elif path.exists() or path.is_symlink():
            entries.append(_Entry(path, path.name))
        else:
            result.skipped.append((str(path), "no such file or folder"))
    seen: set[tuple[int, int]] = set()
    limits = Limits(max_bytes, max_pages, max_chars)
    if progress is not None:
        progress(0, len(entries))
    for done, entry in enumerate(entries, 1):
        _load_into(entry, limits, result, seen)
        if progress is not None:
            progress(done, len(entries))
    return result


def _walk(root: Path, recursive: bool, found: list[_Entry], skipped: list[tuple[str, str]]) -> None:
    """Collect the files under `root` that may be read, with the identity each had then."""
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        skipped.append((str(root), f"cannot open folder: {exc.strerror or exc}"))
        return
    label = real_root.name or "root"

    def on_error(exc: OSError) -> None:
        skipped.append((str(exc.filename), f"cannot list folder: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(root, onerror=on_error):
        here = Path(folder)
        kept = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith("."):
                skipped.append((str(sub), "hidden folder, not read"))
            elif sub.is_symlink():
                skipped.append((str(sub), "symlinked folder, not followed"))
            else:
                kept.append(name)
        dirs[:] = kept if recursive else []
        for name in sorted(files):
            file = here / name
            if name.startswith("."):
                skipped.append((str(file), "hidden file, not read"))
                continue
            try:
                info = file.lstat()
                link = stat.S_ISLNK(info.st_mode)
                if link:
                    target = file.resolve(strict=True)
                    info = target.lstat()  # the resolved path has no link left to follow
            except (OSError, RuntimeError):
                skipped.append((str(file), "broken or looping symlink"))
                continue
            if link and not target.is_relative_to(real_root):
                skipped.append((str(file), f"symlink to {target}, outside {root}; not followed"))
                continue
            source = f"{label}/{file.relative_to(root).as_posix()}"
            found.append(_Entry(file, source, (info.st_dev, info.st_ino), link))


def _load_into(
    entry: _Entry, limits: Limits, result: LoadResult, seen: set[tuple[int, int]]
) -> None:
    """Load one entry into `result`, once per file however many names or links lead to it."""
    identity = entry.expect
    if identity is None:
        try:
            info = entry.path.stat()
        except (OSError, RuntimeError):
            result.skipped.append((str(entry.path), "broken or looping symlink"))
            return
        identity = (info.st_dev, info.st_ino)
    if identity in seen:
        result.skipped.append(
            (str(entry.path), "same file already loaded (duplicate path or link)")
        )
        return
    try:
        result.documents.append(_load(entry, limits))
    except DocumentError as exc:
        result.skipped.append((str(entry.path), str(exc)))
    else:
        seen.add(identity)


# -- chunking ---------------------------------------------------------------------------------


def chunk_documents(
    documents: Sequence[Document],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[Chunk]:
    """Split documents into chunks of at most `chunk_size` characters: at paragraphs, then
    lines, then words, then characters; the same chunks as LangChain's
    `RecursiveCharacterTextSplitter` with these sizes (see `cde_rag.splitting`).

    Each chunk's metadata holds the document's metadata plus `chunk` (its index in the
    document) and `start_index` (its character offset), ready for a vector store.
    """
    check_chunk_sizes(chunk_size, chunk_overlap)
    chunks: list[Chunk] = []
    for doc in documents:
        if not isinstance(doc, Document):
            raise TypeError(
                f"chunk_documents() takes Document objects, got {type(doc).__name__}; "
                "load files with load_document(s) first."
            )
        spans = split_spans(doc.text, chunk_size, chunk_overlap)
        for index, (start, end) in enumerate(spans):
            text = doc.text[start:end]
            meta = {**doc.metadata, "source": doc.source, "chunk": index, "start_index": start}
            chunks.append(
                Chunk(
                    id=chunk_id(doc.source, index, text),
                    text=text,
                    source=doc.source,
                    index=index,
                    metadata=meta,
                )
            )
    return chunks


def chunk_id(source: str, index: int, text: str) -> str:
    """Content-derived id: the same file chunked the same way gets the same ids every run."""
    digest = hashlib.sha256(b"cde-rag-chunk/1\0")
    for part in (source, str(index), text):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def check_chunk_sizes(chunk_size: int, chunk_overlap: int) -> None:
    """Refuse sizes the splitter cannot honour (checked before any file is read)."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if (
        not isinstance(chunk_overlap, int)
        or isinstance(chunk_overlap, bool)
        or not 0 <= chunk_overlap < chunk_size
    ):
        raise ValueError(
            f"chunk_overlap must be an integer from 0 to chunk_size - 1 ({chunk_size - 1}), "
            f"got {chunk_overlap!r}."
        )
