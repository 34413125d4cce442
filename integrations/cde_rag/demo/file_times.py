"""When each file in the demo's index was stored: a small JSON file next to the index.

Chroma holds the chunks and each file's version (`cde_rag.chroma.list_sources`); this file adds
only the time each version was first stored. Times are kept per version, so none is ever shown
for content this file did not see: a file whose stored version differs from the one recorded
(a crash between storing and recording, chunks written by another tool) shows no time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import write_atomic

if TYPE_CHECKING:
    from ..chroma import SourceInfo

FILE_NAME = "indexed-files.json"


class FileTimes:
    """{file name: (version, time stored)} in `folder/indexed-files.json`.

    Writes replace the file atomically; callers serialise them (the demo's indexing lock), and
    reads need no lock."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE_NAME

    def time_of(self, info: SourceInfo, times: dict[str, tuple[str, float]]) -> float | None:
        """When `info`'s stored version was stored, if recorded (`times` from `read`)."""
        recorded = times.get(info.source)
        if info.version is None or recorded is None or recorded[0] != info.version:
            return None
        return recorded[1]

    def read(self) -> dict[str, tuple[str, float]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                str(name): (str(entry["version"]), float(entry["stored_at"]))
                for name, entry in raw["files"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Only times are lost (the index is intact): say so, and start a new record.
            print(f"cde-rag demo: ignoring unreadable {self.path}: {exc}", file=sys.stderr)
            return {}

    def record(self, stored: Iterable[SourceInfo], now: float) -> None:
        """Note `now` for each complete version in `stored` not recorded yet."""
        times = self.read()
        changed = False
        for info in stored:
            if info.version is not None and times.get(info.source, ("",))[0] != info.version:
                times[info.source] = (info.version, now)
                changed = True
        if changed:
            self._write(times)

    def forget(self, names: Iterable[str]) -> None:
        times = self.read()
        gone = [name for name in names if name in times]
        for name in gone:
            del times[name]
        if gone:
            self._write(times)

    def _write(self, times: dict[str, tuple[str, float]]) -> None:
        files = {name: {"version": v, "stored_at": t} for name, (v, t) in sorted(times.items())}
        text = json.dumps({"format": 1, "files": files}, ensure_ascii=False, indent=1)
        try:
            write_atomic(self.path, text.encode("utf-8"))
        except OSError as exc:
            # The chunks are stored; only the times shown are not. Not worth failing for.
            print(f"cde-rag demo: could not record indexing times: {exc}", file=sys.stderr)
