"""`cde-rag index PATHS... --collection NAME`: chunk files, fit the context, embed, store.

Safe to interrupt: run the same command again and it stores what is missing, skipping the
chunks already stored, with the context the collection was created with. With `--engine ray
--out PATH` the same chunks are embedded on a Ray Data actor pool into PATH instead (resumable
the same way), for `cde-rag load` to put into Chroma or LanceDB.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..documents import DEFAULT_MAX_CHARS, DEFAULT_MAX_PAGES
from ._common import (
    UsageError,
    add_chunking_arguments,
    add_model_arguments,
    add_store_arguments,
    describe_store,
    open_client,
    positive_float,
    positive_int,
)
from ._text import terminal_safe, terminal_safe_json

if TYPE_CHECKING:
    from ..ingest import IndexReport
    from ..ray import RayIndexReport

HELP = "index files and folders (txt, md, pdf, html) into a Chroma collection, or on Ray"
CACHE_FILE = "cde-rag-embeddings.sqlite"
# Options of one engine only, refused with the other rather than silently ignored.
LOCAL_ONLY = ("collection", "db", "chroma_url", "cache", "no_cache", "device")
RAY_ONLY = ("out", "address", "actors", "num_cpus", "num_gpus")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to index")
    add_store_arguments(parser, required=False)
    add_model_arguments(parser, default=None)
    add_chunking_arguments(
        parser,
        seed_help="seed for sampling the context's documents, new collections only (default 42)",
    )
    group = parser.add_argument_group("files")
    group.add_argument(
        "--no-recursive", action="store_true", help="read only the top level of each folder"
    )
    group.add_argument(
        "--max-mb",
        type=positive_float,
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
        type=positive_int,
        default=None,
        help="chunks embedded and stored per batch, the unit of resumption (default 128); "
        "with --engine ray, rows per actor batch (default 64)",
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
    ray = parser.add_argument_group(
        "Ray engine (--engine ray: embed on a Ray cluster into Parquet, then cde-rag load)"
    )
    ray.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: embed here and store in Chroma (default); ray: embed on a Ray Data actor "
        "pool and write Parquet shards, the context and a manifest to --out",
    )
    ray.add_argument(
        "--out",
        metavar="PATH",
        help="output folder or URI (s3://bucket/corpus); required with --engine ray",
    )
    ray.add_argument(
        "--address",
        metavar="ADDR",
        help="a running Ray cluster (auto, or HOST:6379; default: start a local Ray)",
    )
    ray.add_argument(
        "--actors",
        type=actor_pool,
        default=1,
        metavar="N|MIN:MAX",
        help="actors in the embedding pool: a size, or MIN:MAX to autoscale (default 1)",
    )
    ray.add_argument(
        "--num-cpus",
        type=positive_float,
        default=1.0,
        metavar="X",
        help="CPUs (and torch threads) per actor (default 1)",
    )
    ray.add_argument(
        "--num-gpus",
        type=positive_float,
        default=None,
        metavar="X",
        help="GPUs per actor, e.g. 1 (default: CPU actors)",
    )


def actor_pool(value: str) -> int | tuple[int, int]:
    """An argparse type: a pool size N, or MIN:MAX with 1 <= MIN <= MAX."""
    low, colon, high = value.partition(":")
    sizes = (positive_int(low), positive_int(high)) if colon else (positive_int(value),) * 2
    if sizes[0] > sizes[1]:
        raise argparse.ArgumentTypeError(f"MIN must not exceed MAX, got {value!r}")
    return sizes if colon else sizes[0]


def run(args: argparse.Namespace) -> int:
    _check_engine_options(args)
    style = args.progress
    if style == "auto":
        style = "bar" if sys.stderr.isatty() else "lines"
    report = _run_ray(args, style) if args.engine == "ray" else _run_local(args, style)
    for path, reason in report.errors:
        print(f"skipped {terminal_safe(str(path))}: {terminal_safe(reason)}", file=sys.stderr)
    if args.json:
        where = {"out": report.out} if args.engine == "ray" else {"store": describe_store(args)}
        print(terminal_safe_json({**asdict(report), **where}, indent=2))
    else:
        print(report.summary())
    return 0


def _check_engine_options(args: argparse.Namespace) -> None:
    """Each engine's options with it only, and what each needs (usage errors, exit 2)."""
    parser = args.command_parser
    ray = args.engine == "ray"
    wrong = [
        "--" + name.replace("_", "-")
        for name in (LOCAL_ONLY if ray else RAY_ONLY)
        if getattr(args, name) != parser.get_default(name)  # a $CDE_RAG_CHROMA_URL is no choice
    ]
    if wrong:
        verb = "applies" if len(wrong) == 1 else "apply"
        raise UsageError(
            f"{', '.join(wrong)} {verb} only with --engine {'local' if ray else 'ray'}."
        )
    if ray and not args.out:
        raise UsageError("--engine ray needs --out PATH, the folder (or URI) to write to.")
    if not ray and not args.collection:
        raise UsageError(
            "the following arguments are required: --collection (or --engine ray --out PATH)"
        )


def _loading(args: argparse.Namespace) -> dict[str, Any]:
    """How both engines read and chunk the files: the same options give the same chunks."""
    return {
        "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap,
        "seed": args.seed,
        "recursive": not args.no_recursive,
        "max_bytes": int(args.max_mb * 1024 * 1024),
        "max_pages": args.max_pages,
        "max_chars": args.max_chars,
    }


def _run_local(args: argparse.Namespace, style: str) -> IndexReport:
    from ..ingest import check_collection_name, index_paths

    check_collection_name(args.collection)
    client = open_client(args, create=True)
    return index_paths(
        args.paths,
        client=client,
        collection=args.collection,
        model=args.model,
        **_loading(args),
        batch_size=args.batch_size,
        embedding_cache=_cache_path(args),
        device=args.device,
        dtype=args.dtype,
        show_progress=style == "bar",
        progress=ProgressLines() if style == "lines" else None,
        prune=args.prune,
    )


def _run_ray(args: argparse.Namespace, style: str) -> RayIndexReport:
    from ..ray import DEFAULT_BATCH, index_folder

    lines = ProgressLines() if style == "lines" else None
    return index_folder(
        args.paths,
        args.out,
        args.model,
        address=args.address,
        revision=args.revision,
        **_loading(args),
        actors=args.actors,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus or 0,
        dtype=args.dtype,
        batch_size=args.batch_size or DEFAULT_BATCH,
        show_progress=style == "bar",
        progress=(lambda done, total: lines("embed", done, total)) if lines else None,
    )


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
