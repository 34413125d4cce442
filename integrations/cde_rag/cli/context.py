"""`cde-rag context fit|show|save|status`: corpus contexts as files you can inspect and reuse,
and how stale a collection's context is.

A context file (safetensors + JSON, written atomically) pins the corpus a set of vectors was
embedded against; `cde-rag serve --context FILE` and `CorpusContext.load` read it back. Files are
written as the server stores them (`context_store.write_context_file`), and the text a context
carries is printed with terminal controls escaped (`_text`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..drift import DEFAULT_SAMPLE, REFIT_THRESHOLD
from ._common import (
    add_chunking_arguments,
    add_model_arguments,
    add_store_arguments,
    describe_store,
    load_model,
    non_negative_int,
    open_client,
)
from ._text import terminal_safe, terminal_safe_json

HELP = "fit a corpus context from files, show one, or save a collection's to a file"
SAMPLE_CHARS = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    fit = actions.add_parser(
        "fit",
        help="fit a context on files (chunked as `index` chunks them) and save it",
        description="Fit a corpus context on the chunks of FILES and save it to -o.",
    )
    fit.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to fit on")
    fit.add_argument("-o", "--output", type=Path, required=True, help="context file to write")
    add_model_arguments(fit)
    add_chunking_arguments(fit)
    fit.add_argument("--force", action="store_true", help="overwrite an existing output file")
    fit.set_defaults(action_run=_fit)

    show = actions.add_parser(
        "show",
        help="describe a context file or a collection's context",
        description="Describe a context: from a file (PATH) or a collection (--collection).",
    )
    show.add_argument("path", nargs="?", type=Path, metavar="PATH", help="context file")
    _add_optional_store(show)
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.add_argument(
        "--sample", type=int, default=5, help="minicorpus documents to show (default 5)"
    )
    show.set_defaults(action_run=_show)

    save = actions.add_parser(
        "save",
        help="save a collection's stored context to a file",
        description="Write the context stored with --collection to -o (atomically).",
    )
    add_store_arguments(save)
    save.add_argument("-o", "--output", type=Path, required=True, help="context file to write")
    save.add_argument("--force", action="store_true", help="overwrite an existing output file")
    save.set_defaults(action_run=_save)

    status = actions.add_parser(
        "status",
        help="is a collection's context stale? counts since the fit, and a drift score",
        description="Compare the context stored with --collection with the records it holds "
        "now: texts it was fitted on, records now, records added and removed since the fit, "
        "and a drift score computed with the first stage on at most --sample records (above "
        f"{REFIT_THRESHOLD} a re-fit is recommended; see the README).",
    )
    add_store_arguments(status)
    status.add_argument(
        "--sample",
        type=non_negative_int,
        default=DEFAULT_SAMPLE,
        help=f"records embedded (first stage) for the drift score; 0 skips it and loads no "
        f"model (default {DEFAULT_SAMPLE})",
    )
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(action_run=_status)


def _add_optional_store(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser, collection=False)
    parser.add_argument("--collection", "-c", default=None, metavar="NAME", help="collection")


def run(args: argparse.Namespace) -> int:
    return int(args.action_run(args))


def _fit(args: argparse.Namespace) -> int:
    from ..context_store import check_context_target, write_context_file
    from ..documents import DocumentError, chunk_documents, load_documents

    check_context_target(args.output, overwrite=args.force)
    loaded = load_documents(args.paths)
    for path, reason in loaded.skipped:
        print(f"skipped {terminal_safe(str(path))}: {terminal_safe(reason)}", file=sys.stderr)
    chunks = chunk_documents(
        loaded.documents, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap
    )
    if not chunks:
        raise DocumentError("no readable text in the files given; nothing to fit a context on.")
    model = load_model(args)
    context = model.fit_context([c.text for c in chunks], seed=args.seed, show_progress=True)
    write_context_file(context, args.output, overwrite=args.force)
    print(
        f"Saved context {context.fingerprint} ({context.size}x{context.dim}, fitted on "
        f"{len(chunks)} chunks of {len(loaded.documents)} files, seed {args.seed}) to "
        f"{terminal_safe(str(args.output))}"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..context import CorpusContext

    if (args.path is None) == (args.collection is None):
        raise ValueError("context show takes a context file PATH or --collection NAME (one).")
    if args.path is not None:
        context = CorpusContext.load(args.path)
        where = str(args.path)
    else:
        context = _collection_context(args)
        where = f"collection {args.collection!r} in {describe_store(args)}"
    info = context.describe(sample=max(args.sample, 0))
    if args.json:
        print(terminal_safe_json({"where": where, **info}, indent=2))
        return 0
    print(f"Context of {terminal_safe(where)}")
    for key, value in info.items():
        if key != "sample":
            print(f"  {key}: {terminal_safe(str(value))}")
    if info["sample"]:
        print("  minicorpus sample:")
        for text in info["sample"]:
            print(f"    - {_preview(text)}")
    return 0


def _save(args: argparse.Namespace) -> int:
    from ..context_store import check_context_target, write_context_file

    check_context_target(args.output, overwrite=args.force)
    context = _collection_context(args)
    write_context_file(context, args.output, overwrite=args.force)
    print(
        f"Saved context {context.fingerprint} of {args.collection!r} to "
        f"{terminal_safe(str(args.output))}"
    )
    return 0


def _collection_context(args: argparse.Namespace) -> Any:
    """The stored context, read without loading the model (only the context is needed)."""
    from .. import chroma

    return chroma.get_context(_raw_collection(args))


def _raw_collection(args: argparse.Namespace) -> Any:
    """The --collection, opened without its embedding function (nothing is loaded)."""
    from chromadb.errors import NotFoundError

    from ..errors import CDEError

    client = open_client(args)
    try:
        return client.get_collection(args.collection, embedding_function=None)
    except NotFoundError:
        raise CDEError(
            f"no collection {args.collection!r} in {describe_store(args)}; create it with "
            f"cde-rag index PATHS --collection {args.collection}."
        ) from None


def _status(args: argparse.Namespace) -> int:
    from .. import chroma

    status = chroma.context_status(_raw_collection(args), sample=args.sample)
    if args.json:
        print(terminal_safe_json(status.to_dict(), indent=2))
        return 0
    counts = status.to_dict()
    print(f"Context {status.context[:12]} of {terminal_safe(repr(status.collection))}")
    for key in ("kind", "fitted_on", "records", "added", "removed", "drift", "sampled"):
        value = counts[key]
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"  {key.replace('_', ' ')}: {'unknown' if value is None else shown}")
    print(terminal_safe(status.advice()))
    return 0


def _preview(text: str) -> str:
    """One line of at most SAMPLE_CHARS visible characters, controls escaped."""
    text = " ".join(text.split())
    text = text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"
    return terminal_safe(text)
