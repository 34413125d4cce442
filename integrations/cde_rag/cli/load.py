"""`cde-rag load PATH --lancedb URI --collection NAME`: bulk-load an embeddings folder.

PATH is the output of a distributed embedding job (`cde_rag.ray.index_folder`): Parquet
shards, their corpus context and a manifest. The context is stored beside the vectors and
checked at query time. Loading is idempotent (rows are merged on their content id), so
loading twice, or loading a resumed job's output again, duplicates nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..lancedb_store import LoadReport

HELP = "load an embeddings folder (from a Ray job) into LanceDB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the embeddings folder (a path or URI)")
    parser.add_argument(
        "--collection", "-c", required=True, metavar="NAME", help="table to load into"
    )
    target = parser.add_argument_group("target").add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--lancedb",
        metavar="URI",
        help="a LanceDB database: a local folder or an object-store URI (s3://bucket/db)",
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "bar", "none"],
        default="auto",
        help="a progress bar, or nothing (default: a bar on a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    report = _load_lancedb(args)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(report.summary())
    return 0


def _load_lancedb(args: argparse.Namespace) -> LoadReport:
    from ..lancedb_store import check_table_name, load_embeddings

    check_table_name(args.collection)
    show = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
    return load_embeddings(args.path, args.lancedb, args.collection, show_progress=show)
