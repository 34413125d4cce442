"""Recursive character splitting that knows where every chunk came from.

LangChain's `RecursiveCharacterTextSplitter` returns chunk strings; finding them in the text
again is quadratic or worse on repetitive text (40 KB of one character took minutes), and its
merge step copies its window list at every step, so its own cost grows with `chunk_size` times
the text. This splitter makes the same chunks as LangChain's with its default settings
(separators "\\n\\n", "\\n", " ", ""; a separator kept at the start of the piece it precedes;
pieces merged up to `chunk_size` characters, up to `chunk_overlap` of them carried over;
whitespace stripped) but works on `(start, end)` spans of the original text, so every offset
is known by construction. Separators are found by vectorised comparisons and windows by
binary search, so text cut into many tiny pieces (one character repeated, "0," repeated, a word
repeated) costs about what prose does.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence

import numpy as np

SEPARATORS = ("\n\n", "\n", " ", "")


def split_spans(text: str, chunk_size: int, chunk_overlap: int) -> Iterator[tuple[int, int]]:
    """`(start, end)` of each chunk of `text`, in order, without surrounding whitespace.

    `text[start:end]` is the chunk; whitespace-only chunks are left out. Sizes are checked by
    the caller (`documents.check_chunk_sizes`): `0 <= chunk_overlap < chunk_size`.
    """
    # One code point per array element, so array positions are string positions.
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    for start, end in _split(text, codes, 0, len(text), 0, chunk_size, chunk_overlap):
        piece = text[start:end]
        kept = piece.strip()
        if kept:
            start = int(start) + len(piece) - len(piece.lstrip())  # a plain int, not numpy's
            yield start, start + len(kept)


def _split(
    text: str, codes: np.ndarray, start: int, end: int, level: int, size: int, overlap: int
) -> Iterator[tuple[int, int]]:
    """Cut `text[start:end]` at the first separator (from `level` on) that occurs in it,
    merge runs of pieces shorter than `size`, and split longer pieces at the next separators."""
    level = next(
        i for i, sep in enumerate(SEPARATORS) if i >= level and _occurs(text, sep, start, end)
    )
    bounds = _piece_bounds(codes, SEPARATORS[level], start, end)
    run_start = 0  # index in `bounds` where the current run of short pieces begins
    for i in _long_pieces(bounds, size):
        yield from _merge(bounds, run_start, i, size, overlap)
        run_start = i + 1
        if level + 1 < len(SEPARATORS):
            yield from _split(text, codes, bounds[i], bounds[i + 1], level + 1, size, overlap)
        else:  # a single character at chunk size 1: nothing finer to cut
            yield bounds[i], bounds[i + 1]
    yield from _merge(bounds, run_start, len(bounds) - 1, size, overlap)


def _occurs(text: str, separator: str, start: int, end: int) -> bool:
    return not separator or text.find(separator, start, end) != -1


def _piece_bounds(codes: np.ndarray, separator: str, start: int, end: int) -> Sequence[int]:
    """Piece boundaries: piece k is `text[bounds[k]:bounds[k + 1]]`; each piece but the first
    begins with the separator (as LangChain's `keep_separator=True`); empty pieces dropped."""
    if not separator:
        return range(start, end + 1)
    span = codes[start:end]
    mark = ord(separator[0])
    if len(separator) == 1:
        found = np.flatnonzero(span == mark)
    else:  # "\n\n": in a run of newlines, matches are taken from the left, without overlap
        found = np.flatnonzero((span[:-1] == mark) & (span[1:] == mark))
        run = np.flatnonzero(np.diff(found, prepend=-2) != 1)  # where each run of hits begins
        first_of_run = np.zeros(len(found), dtype=np.int64)
        first_of_run[run] = run
        found = found[(np.arange(len(found)) - np.maximum.accumulate(first_of_run)) % 2 == 0]
    head = [start] if not len(found) or found[0] else []
    return np.concatenate((head, found + start, [end])).astype(np.int64)


def _long_pieces(bounds: Sequence[int], size: int) -> Sequence[int]:
    """Indices of the pieces of `size` characters or more (split further, never merged)."""
    if isinstance(bounds, range):  # one character each
        return range(len(bounds) - 1) if size == 1 else ()
    return np.flatnonzero(np.diff(bounds) >= size).tolist()


def _merge(
    bounds: Sequence[int], first: int, last: int, size: int, overlap: int
) -> Iterator[tuple[int, int]]:
    """Merge the short pieces `first..last-1` into windows of at most `size` characters,
    carrying over the last pieces of a window that fit in `overlap` and leave room for the
    next piece. The pieces are consecutive, so a window's length is the span it covers."""
    if first >= last:
        return
    low = first  # the window holds pieces low..j-1
    while True:
        # The first piece j that does not fit: its end is past the window's start + size.
        j = bisect_right(bounds, bounds[low] + size, low, last + 1) - 1
        if j >= last:
            break
        yield bounds[low], bounds[j]
        # Drop pieces from the front until what is left fits in the overlap and leaves room
        # for piece j (or nothing is left).
        low = max(
            bisect_left(bounds, bounds[j] - overlap, low, j),
            bisect_left(bounds, bounds[j + 1] - size, low, j),
        )
    yield bounds[low], bounds[last]
