"""Load files into text documents and split them into chunks with stable ids.

People point RAG tools at messy folders. Everything here turns a bad file into a clear reason
in `LoadResult.skipped` instead of an exception, so one broken PDF never stops an indexing run,
and chunk ids are derived from content so running ingestion again yields the same ids.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import DocumentError
from .extraction import SUPPORTED_SUFFIXES, Limits, clean_text, extract_text
from .splitting import split_spans

__all__ = [
    "DEFAULT_CHUNK_OVERLAP",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_PAGES",
    "SUPPORTED_SUFFIXES",
    "Chunk",
    "Document",
    "DocumentError",
    "LoadResult",
    "check_chunk_sizes",
    "chunk_documents",
    "chunk_id",
    "clean_text",
    "display_name",
    "load_document",
    "load_documents",
]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# A PDF's work is not bounded by its size (a 3 KB page tree can claim 32,768 pages, a 270 KB
# file reusing one content stream on every page yields 20 MB of text), so pages and extracted
# characters are capped too: far above a long book, far below what makes indexing hang.
DEFAULT_MAX_PAGES = 5_000
DEFAULT_MAX_CHARS = 10_000_000
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 150


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
    return _load(FileEntry(Path(path), source), Limits(max_bytes, max_pages, max_chars))


class FileEntry(NamedTuple):
    """A file to read. `expect` is the (device, inode) a folder walk saw at `path`, and `link`
    whether it saw a symlink there (then the link is followed, to that same file only)."""

    path: Path
    source: str | None
    expect: tuple[int, int] | None = None
    link: bool = True


def _load(entry: FileEntry, limits: Limits) -> Document:
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
    text = extract_text(suffix, data, meta, limits)
    if not text.strip():
        raise DocumentError("no text left after removing control characters and whitespace")
    name = display_name(entry.source if entry.source is not None else file.name)
    return Document(text=text, source=name, metadata={"source": name, **meta})


def display_name(name: str) -> str:
    """A printable, valid-UTF-8 version of a file name (undecodable bytes become U+FFFD)."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    name = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in name
    )
    return name.strip() or "unnamed"


def _read_bytes(entry: FileEntry, max_bytes: int) -> bytes:
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
    result = LoadResult()
    entries = list_files(paths, recursive, result.skipped)
    limits = Limits(max_bytes, max_pages, max_chars)
    result.documents.extend(doc for _, doc in read_files(entries, limits, result.skipped, progress))
    return result


def list_files(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    recursive: bool,
    skipped: list[tuple[str, str]],
) -> list[FileEntry]:
    """The files `load_documents` would read, in its order, without reading them; what cannot
    be read at all (missing paths, hidden or outside links) is added to `skipped`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    entries: list[FileEntry] = []
    for given in paths:
        path = Path(given).expanduser()  # "~/notes" from Python, as a shell would
        if path.is_dir():
            _walk(path, recursive, entries, skipped)
        elif path.exists() or path.is_symlink():
            entries.append(FileEntry(path, path.name))
        else:
            skipped.append((str(path), "no such file or folder"))
    return entries


def read_files(
    entries: Sequence[FileEntry],
    limits: Limits,
    skipped: list[tuple[str, str]],
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[FileEntry, Document]]:
    """Each readable entry with its document, one file at a time (nothing is kept), as
    `load_documents` loads them: a file reached twice is read once, bad files go to `skipped`."""
    seen: set[tuple[int, int]] = set()
    if progress is not None:
        progress(0, len(entries))
    for done, entry in enumerate(entries, 1):
        doc = _load_once(entry, limits, skipped, seen)
        if doc is not None:
            yield entry, doc
        if progress is not None:
            progress(done, len(entries))


def read_file(entry: FileEntry, limits: Limits) -> Document:
    """An entry `read_files` gave, read again (`DocumentError` if it cannot be any more)."""
    return _load(entry, limits)


def _walk(
    root: Path, recursive: bool, found: list[FileEntry], skipped: list[tuple[str, str]]
) -> None:
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
            found.append(FileEntry(file, source, (info.st_dev, info.st_ino), link))


def _load_once(
    entry: FileEntry, limits: Limits, skipped: list[tuple[str, str]], seen: set[tuple[int, int]]
) -> Document | None:
    """Load one entry, once per file however many names or links lead to it (None, with the
    reason in `skipped`, when it is not loaded)."""
    identity = entry.expect
    if identity is None:
        try:
            info = entry.path.stat()
        except (OSError, RuntimeError):
            skipped.append((str(entry.path), "broken or looping symlink"))
            return None
        identity = (info.st_dev, info.st_ino)
    if identity in seen:
        skipped.append((str(entry.path), "same file already loaded (duplicate path or link)"))
        return None
    try:
        doc = _load(entry, limits)
    except DocumentError as exc:
        skipped.append((str(entry.path), str(exc)))
        return None
    seen.add(identity)
    return doc


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


# Chunk metadata that records which version of its source a chunk belongs to, and how many
# chunks that version has, so a store can tell an unchanged source from its metadata alone.
SOURCE_VERSION_KEY = "cde_rag_source_version"
SOURCE_RECORDS_KEY = "cde_rag_source_records"


def version_of(parts: Iterable[Any]) -> str:
    """A content hash of JSON-able parts, for a source's version."""
    version = VersionHash()
    for part in parts:
        version.add(part)
    return version.hexdigest()


class VersionHash:
    """`version_of`, fed one part at a time (a source's documents may arrive far apart)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(b"cde-rag-source/1\0")

    def add(self, part: Any) -> None:
        self._digest.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode())
        self._digest.update(b"\0")

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:32]


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
