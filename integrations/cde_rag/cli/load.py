"""`cde-rag load PATH --db DIR | --chroma-url URL | --lancedb URI --collection NAME`.

PATH is the output of a distributed embedding job (`cde-rag index --engine ray`): Parquet
shards, their corpus context and a manifest. Into Chroma, the collection gets the layout
`cde-rag index` makes (the context stored with it), so `cde-rag query`, the demo and the
adapters use it unchanged; into LanceDB, the context is stored beside the table and checked at
query time. Loading is idempotent (rows are keyed on their content id), so loading twice, or
loading a resumed job's output again, duplicates nothing. A collection or table holding
another context is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import UsageError, add_model_arguments, chroma_url, describe_store, open_client

if TYPE_CHECKING:
    from ..chroma_load import ChromaLoadReport
    from ..lancedb_store import LoadReport

HELP = "load an embeddings folder (from cde-rag index --engine ray) into Chroma or LanceDB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the embeddings folder (a path or URI)")
    parser.add_argument(
        "--collection", "-c", required=True, metavar="NAME", help="collection or table to load into"
    )
    target = parser.add_argument_group("target").add_mutually_exclusive_group(required=True)
    target.add_argument("--db", type=Path, metavar="DIR", help="a local Chroma folder")
    target.add_argument(
        "--chroma-url",
        type=chroma_url,
        metavar="URL",
        help="a Chroma server, e.g. http://127.0.0.1:8000",
    )
    target.add_argument(
        "--lancedb",
        metavar="URI",
        help="a LanceDB database: a local folder or an object-store URI (s3://bucket/db)",
    )
    add_model_arguments(
        parser,
        default=None,
        model_help="Chroma only: where the folder's model is on this machine, loaded to check "
        "the context (default: the one its manifest names)",
        dtype=False,
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "bar", "none"],
        default="auto",
        help="a progress bar, or nothing (default: a bar on a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    show = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
    report: ChromaLoadReport | LoadReport
    report = _load_lancedb(args, show) if args.lancedb else _load_chroma(args, show)
    if args.json:
        record = asdict(report)
        if not args.lancedb:
            record["store"] = describe_store(args)
        print(json.dumps(record, indent=2))
    else:
        print(report.summary())
    return 0


def _load_chroma(args: argparse.Namespace, show: bool) -> ChromaLoadReport:
    from ..chroma_load import load_embeddings
    from ..embeddings_folder import EmbeddingsFolder
    from ..ingest import check_collection_name

    check_collection_name(args.collection)
    EmbeddingsFolder(args.path).finished()  # refuse a bad folder before creating the --db one
    return load_embeddings(
        args.path,
        open_client(args, create=True),
        args.collection,
        model=args.model,
        revision=args.revision,
        device=args.device,
        show_progress=show,
    )


def _load_lancedb(args: argparse.Namespace, show: bool) -> LoadReport:
    from ..lancedb_store import check_table_name, load_embeddings

    given = [f"--{name}" for name in ("model", "revision", "device") if getattr(args, name)]
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to loading into Chroma; LanceDB stores the model's name "
            "with the table (pass --model to cde-rag query --lancedb instead)."
        )
    check_table_name(args.collection)
    return load_embeddings(args.path, args.lancedb, args.collection, show_progress=show)
