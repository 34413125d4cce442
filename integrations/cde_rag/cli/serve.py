"""`cde-rag serve`: run the OpenAI-compatible embeddings server (see `cde_rag.server`)."""

from __future__ import annotations

import argparse
import os

from ..server_limits import MAX_BODY_BYTES, MAX_INPUTS, MAX_TOKENS, RequestLimits
from ._common import add_model_arguments, load_model, port, positive_int

HELP = "serve an OpenAI-compatible embeddings API (/v1/embeddings) with corpus contexts"


def _positive_mb(value: str) -> float:
    """An argparse type: a size in MiB, more than 0."""
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 MiB, got {value}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (a reverse proxy's name; "
        "repeatable). Bound to loopback, the server answers only localhost, 127.0.0.1 and "
        "[::1] otherwise, which stops DNS-rebinding web pages",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $CDE_RAG_API_KEY; no key when neither is set)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="folder for stored contexts (default ~/.local/share/cde-rag/server)",
    )
    parser.add_argument(
        "--context",
        default=None,
        metavar="PATH",
        help="context file (ctx.save / `cde-rag context save`) used when a request names "
        "none; default: the model's random-strings fallback",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a request may wait for others to share its model call (default 5)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=256,
        help="most texts merged into one model call (default 256)",
    )
    limits = parser.add_argument_group("request limits (refused with 400/413 before the model)")
    limits.add_argument(
        "--max-inputs",
        type=positive_int,
        default=MAX_INPUTS,
        help=f"most texts in one embeddings request (default {MAX_INPUTS}, as OpenAI)",
    )
    limits.add_argument(
        "--max-tokens",
        type=positive_int,
        default=MAX_TOKENS,
        help="most tokens in one embeddings request, after each text is cut to the model's "
        f"512 (default {MAX_TOKENS}, as OpenAI)",
    )
    limits.add_argument(
        "--max-body-mb",
        type=_positive_mb,
        default=MAX_BODY_BYTES / 2**20,
        metavar="MB",
        help=f"largest request body in MiB (default {MAX_BODY_BYTES // 2**20})",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default info)",
    )


def run(args: argparse.Namespace) -> int:
    from ..context import CorpusContext
    from ..server import API_KEY_ENV, serve

    # Read the context file first: a wrong path fails in a second, not after the model loads.
    default_context = CorpusContext.load(args.context) if args.context else None
    model = load_model(args)
    serve(
        model,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        data_dir=args.data,
        default_context=default_context,
        max_wait=args.batch_wait_ms / 1000,
        max_batch_texts=args.max_batch,
        extra_hosts=args.allowed_host,
        limits=RequestLimits(
            max_inputs=args.max_inputs,
            max_tokens=args.max_tokens,
            max_body_bytes=int(args.max_body_mb * 2**20),
        ),
        log_level=args.log_level,
    )
    return 0
