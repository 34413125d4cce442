"""`cde-rag query TEXT --collection NAME`: the chunks nearest to a question.

The collection is a Chroma one (--db, --chroma-url), or a LanceDB table that `cde-rag load`
filled (--lancedb URI); either way the question is embedded with the context stored with it.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from typing import TYPE_CHECKING

from ._common import (
    add_model_arguments,
    add_store_arguments,
    describe_store,
    model_override,
    open_client,
)
from ._text import terminal_safe, terminal_safe_json

if TYPE_CHECKING:
    from ..ingest import Hit

HELP = "search a collection: the k chunks nearest to a question, with sources and scores"
PREVIEW_CHARS = 300
# cde-rag's own companion collections (stored contexts, rebuilds in progress).
_INTERNAL = re.compile(r"-cde-(context-[0-9a-f]{16}|rebuild)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", metavar="TEXT", help="the question or text to search for")
    add_store_arguments(parser).add_argument(
        "--lancedb",
        metavar="URI",
        help="search a LanceDB table loaded by cde-rag load (a local folder or s3://...)",
    )
    parser.add_argument(
        "-k", "--top-k", dest="k", type=int, default=5, help="how many chunks (default 5)"
    )
    parser.add_argument(
        "--source", default=None, help="only chunks of this source (as printed by query)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print hits as JSON (full text and metadata)"
    )
    add_model_arguments(parser, default=None)


def run(args: argparse.Namespace) -> int:
    from ..ingest import check_query

    check_query(args.text, args.k)
    hits = _search_lancedb(args) if args.lancedb else _search_chroma(args)
    if args.json:
        print(terminal_safe_json([asdict(hit) for hit in hits], indent=2))
        return 0
    if not hits:
        print(
            f"No chunks in {args.collection!r}"
            + (f" from {args.source!r}." if args.source else ".")
        )
    for hit in hits:
        text = " ".join(hit.text.split())
        if len(text) > PREVIEW_CHARS:
            text = text[: PREVIEW_CHARS - 1] + "…"
        print(
            f"[{hit.rank}] {hit.score:.3f}  {terminal_safe(hit.source)} (chunk {hit.chunk})\n"
            f"    {terminal_safe(text)}"
        )
    return 0


def _search_chroma(args: argparse.Namespace) -> list[Hit]:
    from ..ingest import query_collection

    where = {"source": args.source} if args.source else None
    return query_collection(open_existing(args), args.text, k=args.k, where=where)


def _search_lancedb(args: argparse.Namespace) -> list[Hit]:
    from ..lancedb_store import search

    return search(
        args.lancedb,
        args.collection,
        args.text,
        k=args.k,
        source=args.source,
        model=args.model,
        revision=args.revision,
        device=args.device,
        dtype=args.dtype,
    )


def open_existing(args: argparse.Namespace):
    """Open --collection with its stored context, or say which collections there are."""
    from chromadb.errors import NotFoundError

    from .. import chroma
    from ..errors import CDEError

    client = open_client(args)
    try:
        return chroma.open_collection(client, args.collection, model=model_override(args))
    except NotFoundError:
        names = sorted(c.name for c in client.list_collections() if not _INTERNAL.search(c.name))
        there = f"; collections there: {', '.join(names)}" if names else " (it has none)"
        raise CDEError(
            f"no collection {args.collection!r} in {describe_store(args)}{there}. Create it with "
            f"cde-rag index PATHS --collection {args.collection}."
        ) from None
