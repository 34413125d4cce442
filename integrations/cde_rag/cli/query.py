"""`cde-rag query TEXT --collection NAME`: the chunks nearest to a question."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict

from ._common import (
    add_model_arguments,
    add_store_arguments,
    describe_store,
    model_override,
    open_client,
)

HELP = "search a collection: the k chunks nearest to a question, with sources and scores"
PREVIEW_CHARS = 300
# cde-rag's own companion collections (stored contexts, rebuilds in progress).
_INTERNAL = re.compile(r"-cde-(context-[0-9a-f]{16}|rebuild)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", metavar="TEXT", help="the question or text to search for")
    add_store_arguments(parser)
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
    from ..ingest import check_query, query_collection

    check_query(args.text, args.k)
    collection = open_existing(args)
    where = {"source": args.source} if args.source else None
    hits = query_collection(collection, args.text, k=args.k, where=where)
    if args.json:
        print(json.dumps([asdict(hit) for hit in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print(f"No chunks in {args.collection!r}" + (f" from {args.source!r}." if where else "."))
    for hit in hits:
        text = " ".join(hit.text.split())
        if len(text) > PREVIEW_CHARS:
            text = text[: PREVIEW_CHARS - 1] + "…"
        print(f"[{hit.rank}] {hit.score:.3f}  {hit.source} (chunk {hit.chunk})\n    {text}")
    return 0


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
