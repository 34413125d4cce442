"""`cde-rag index PATHS... --collection NAME`: chunk files, fit the context, embed, store.

Safe to interrupt: run the same command again and it stores what is missing, skipping the
chunks already stored, with the context the collection was created with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..documents import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_PAGES,
)
from ._common import (
    add_model_arguments,
    add_store_arguments,
    describe_store,
    open_client,
    positive_int,
)

HELP = "index files and folders (txt, md, pdf, html) into a Chroma collection"
CACHE_FILE = "cde-rag-embeddings.sqlite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to index")
    add_store_arguments(parser)
    add_model_arguments(parser, default=None)
    group = parser.add_argument_group("chunking and context")
    group.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"most characters per chunk (default {DEFAULT_CHUNK_SIZE})",
    )
    group.add_argument(
        "--chunk-overlap",
        type=int,
        default=DEFAULT_CHUNK_OVERLAP,
        help=f"characters shared by neighbouring chunks (default {DEFAULT_CHUNK_OVERLAP})",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed for sampling the context's documents, new collections only (default 42)",
    )
    group.add_argument(
        "--no-recursive", action="store_true", help="read only the top level of each folder"
    )
    group.add_argument(
        "--max-mb",
        type=float,
        default=50.0,
        help="skip files larger than this many megabytes (default 50)",
    )
    group.add_argument(
        "--max-pages",
        type=positive_int,
        default=DEFAULT_MAX_PAGES,
        help=f"skip PDFs with more pages than this (default {DEFAULT_MAX_PAGES:,})",
    )
    group.add_argument(
        "--max-chars",
        type=positive_int,
        default=DEFAULT_MAX_CHARS,
        help=f"skip files whose text is longer than this many characters; a PDF stops being "
        f"read there (default {DEFAULT_MAX_CHARS:,})",
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="chunks embedded and stored per batch, the unit of resumption (default 128)",
    )
    cache = run_group.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"SQLite embedding cache, so re-indexing unchanged chunks re-embeds nothing "
        f"(default with --db: DIR/{CACHE_FILE}; none with --chroma-url)",
    )
    cache.add_argument("--no-cache", action="store_true", help="do not use an embedding cache")
    run_group.add_argument(
        "--progress",
        choices=["auto", "bar", "lines", "none"],
        default="auto",
        help="progress bars, plain lines (for logs), or nothing (default: bars on a "
        "terminal, lines otherwise)",
    )
    run_group.add_argument(
        "--prune",
        action="store_true",
        help="remove the chunks of files gone from the folders given (default: keep them and "
        "list them)",
    )
    run_group.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..ingest import check_collection_name, index_paths

    check_collection_name(args.collection)
    if args.max_mb <= 0:
        raise ValueError(f"--max-mb must be positive, got {args.max_mb}.")
    client = open_client(args, create=True)
    style = args.progress
    if style == "auto":
        style = "bar" if sys.stderr.isatty() else "lines"
    report = index_paths(
        args.paths,
        client=client,
        collection=args.collection,
        model=args.model,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        seed=args.seed,
        recursive=not args.no_recursive,
        max_bytes=int(args.max_mb * 1024 * 1024),
        max_pages=args.max_pages,
        max_chars=args.max_chars,
        batch_size=args.batch_size,
        embedding_cache=_cache_path(args),
        device=args.device,
        dtype=args.dtype,
        show_progress=style == "bar",
        progress=ProgressLines() if style == "lines" else None,
        prune=args.prune,
    )
    for path, reason in report.errors:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({**asdict(report), "store": describe_store(args)}, indent=2))
    else:
        print(report.summary())
    return 0


def _cache_path(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    if args.cache is not None:
        return args.cache
    if args.chroma_url and args.db is None:
        return None
    return Path(describe_store(args)) / CACHE_FILE


class ProgressLines:
    """Progress as plain lines on stderr: every stored batch, other phases at most each second.

    Lines suit logs and CI, and let a caller follow a run without parsing progress bars.
    """

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.phase = ""
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        first = phase != self.phase
        self.phase = phase
        if phase == "store" and first and done:
            print(
                f"store: {done} of {total} chunks already stored, skipping them",
                file=sys.stderr,
                flush=True,
            )
        if phase == "store" or first or done == total or now - self.last >= self.interval:
            self.last = now
            print(f"{phase} {done}/{total}", file=sys.stderr, flush=True)
