"""When to show a progress bar: one rule for the engine, the adapters and Chroma.

Settings are layered (a call's argument, then the object's own setting, ...) and the first one
that is not None decides, so True and False are always obeyed. When every setting is None, bars
show for long work only (`PROGRESS_MIN_TEXTS` items or more): a query or a small batch stays
quiet, while fitting a context or indexing a corpus shows how far it got. (sentence-transformers
decides None from its logger level instead; a length rule keeps long work visible by default.)
"""

from __future__ import annotations

# Work on at least this many items shows a progress bar unless a setting says otherwise.
PROGRESS_MIN_TEXTS = 64


def progress_bar_enabled(*settings: bool | None, count: int) -> bool:
    """Whether to show a bar for work on `count` items: the first setting given decides."""
    for setting in settings:
        if setting is not None:
            return bool(setting)
    return count >= PROGRESS_MIN_TEXTS
