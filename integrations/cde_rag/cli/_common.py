"""Options and checks shared by the `cde-rag` commands: the model, chunking, where Chroma
lives, the port a server binds; and the checks `main` runs before a command loads anything.

Everything here is cheap to import (no torch, transformers or chromadb at module level), so
argument errors appear at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..context import DEFAULT_SEED
from ..documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, check_chunk_sizes
from ..errors import CDEError
from ..paths import data_dir
from ._text import terminal_safe

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from ..model import CDEModel

DEFAULT_MODEL = "jxm/cde-small-v2"
DB_ENV = "CDE_RAG_DB"
CHROMA_URL_ENV = "CDE_RAG_CHROMA_URL"
# Ports tried after a taken one, to suggest a free one in the error.
PORT_SUGGESTIONS = 20


class UsageError(CDEError, ValueError):
    """Options that do not fit together: shown with the command's usage, exit status 2."""


# -- argparse types ------------------------------------------------------------------------------


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None


def port(value: str) -> int:
    """An argparse type: a TCP port."""
    number = _integer(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {number}")
    return number


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    number = _integer(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {number}")
    return number


def non_negative_int(value: str) -> int:
    """An argparse type: an integer of at least 0."""
    number = _integer(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {value}")
    return number


def chroma_url(value: str) -> str:
    """An argparse type: the URL of a Chroma server, http:// or https:// and a host."""
    url = urlsplit(value.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(
            f"needs a URL that starts with http:// or https://, e.g. http://localhost:8000; got "
            f"{value!r} (from --chroma-url or ${CHROMA_URL_ENV})"
        )
    try:
        url.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise argparse.ArgumentTypeError(f"has an invalid port: {value!r}") from None
    return value.strip()


# -- option groups -------------------------------------------------------------------------------


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = DEFAULT_MODEL,
    model_help: str | None = None,
    dtype: bool = True,
) -> None:
    """--model, --revision, --device and (with `dtype`) --dtype. `default=None` means: the one
    stored with the collection (commands that open an existing collection), unless
    `model_help` says what it means for the command."""
    if model_help is None:
        model_help = (
            f"hub id or local checkpoint folder (default: {default})"
            if default
            else "hub id or local checkpoint folder (default: the one the collection was "
            f"indexed with; {DEFAULT_MODEL} when `index` creates the collection)"
        )
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default, metavar="ID_OR_PATH", help=model_help)
    group.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    group.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if present)"
    )
    if dtype:
        group.add_argument(
            "--dtype",
            default=None,
            choices=["float32", "bfloat16"],
            help="float32 (exact, default) or bfloat16 (fast mode on GPUs)",
        )


def load_model(args: argparse.Namespace, default: str = DEFAULT_MODEL) -> CDEModel:
    """The process-wide model the arguments name (`default` when --model was left out)."""
    from ..model import shared_model

    return shared_model(
        args.model or default, revision=args.revision, device=args.device, dtype=args.dtype
    )


def model_override(args: argparse.Namespace) -> CDEModel | None:
    """The model named on the command line, or None to use the one a collection records."""
    return load_model(args) if args.model else None


def add_chunking_arguments(
    parser: argparse.ArgumentParser,
    *,
    seed_help: str = f"seed for sampling the context's documents (default {DEFAULT_SEED})",
) -> None:
    """--chunk-size, --chunk-overlap and --seed, with the library's defaults; `main` checks
    that the overlap is smaller than the size before the command runs."""
    group = parser.add_argument_group("chunking and context")
    group.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"most characters per chunk (default {DEFAULT_CHUNK_SIZE})",
    )
    group.add_argument(
        "--chunk-overlap",
        type=non_negative_int,
        default=DEFAULT_CHUNK_OVERLAP,
        help=f"characters shared by neighbouring chunks (default {DEFAULT_CHUNK_OVERLAP})",
    )
    group.add_argument("--seed", type=non_negative_int, default=DEFAULT_SEED, help=seed_help)


def default_db() -> Path:
    """$CDE_RAG_DB, else $XDG_DATA_HOME/cde-rag/chroma (~/.local/share/cde-rag/chroma): one
    place, whatever the working folder, so `index` and `query` find the same collections."""
    return data_dir("chroma", env=DB_ENV)


def add_store_arguments(
    parser: argparse.ArgumentParser, *, collection: bool = True, required: bool = True
) -> argparse._MutuallyExclusiveGroup:
    """--collection (`required` or not), and either --db DIR (a local Chroma folder) or
    --chroma-url URL; returns that choice's group, for a command that offers another store."""
    group = parser.add_argument_group("Chroma store")
    if collection:
        group.add_argument(
            "--collection", "-c", required=required, metavar="NAME", help="Chroma collection name"
        )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"local Chroma folder (default: ${DB_ENV}, else ~/.local/share/cde-rag/chroma)",
    )
    where.add_argument(
        "--chroma-url",
        type=chroma_url,
        default=os.environ.get(CHROMA_URL_ENV),
        metavar="URL",
        help=f"a Chroma server, e.g. http://127.0.0.1:8000 (default: ${CHROMA_URL_ENV})",
    )
    return where


def open_client(args: argparse.Namespace, *, create: bool = False) -> ClientAPI:
    """A Chroma client for --db or --chroma-url, with Chroma's telemetry off. A missing --db
    folder is created only when `create` (indexing); reading commands say it is missing."""
    import chromadb

    settings = chromadb.Settings(anonymized_telemetry=False)
    if args.chroma_url and args.db is None:
        url = urlsplit(chroma_url(args.chroma_url))
        try:
            return chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=settings,
            )
        except Exception as exc:  # chromadb raises bare ValueError/Exception for a dead server
            raise ConnectionError(
                f"cannot reach the Chroma server at {args.chroma_url} ({exc}); start it with "
                "'chroma run --path DIR' or check the URL."
            ) from None
    path = args.db if args.db is not None else default_db()
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--db must be a folder, but {path} is a file.")
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no Chroma database at {path}; index documents into it first "
                f"(cde-rag index PATHS --collection NAME --db {path}) or pass the right --db."
            )
        path.mkdir(parents=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)


def describe_store(args: argparse.Namespace) -> str:
    if args.chroma_url and args.db is None:
        return args.chroma_url
    return str(args.db if args.db is not None else default_db())


# -- checks before a command runs, and progress lines ----------------------------------------------


def preflight(args: argparse.Namespace) -> None:
    """What can be checked before anything heavy loads: chunk sizes that fit together, and a
    free port for commands that bind one (--host and --port), so a taken port is reported in a
    second instead of after the model has loaded."""
    if hasattr(args, "chunk_size") and hasattr(args, "chunk_overlap"):
        if args.chunk_size < 1:
            raise UsageError(f"--chunk-size must be a positive integer, got {args.chunk_size}.")
        try:
            check_chunk_sizes(args.chunk_size, args.chunk_overlap)
        except ValueError:
            raise UsageError(
                f"--chunk-overlap must be from 0 to --chunk-size - 1 ({args.chunk_size - 1}), "
                f"got {args.chunk_overlap}."
            ) from None
    if hasattr(args, "host") and hasattr(args, "port"):
        check_port_free(args.host, args.port)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (or one this user may not bind), naming
    --port and a free port nearby; bound the way servers bind (SO_REUSEADDR)."""
    reason = _bind_error(host, port)
    if reason is None:
        return
    if reason.errno == errno.EADDRINUSE:
        free = next(
            (p for p in range(port + 1, min(port + PORT_SUGGESTIONS, 65535) + 1)
             if _bind_error(host, p) is None),
            None,
        )  # fmt: skip
        hint = f", e.g. --port {free}" if free else ""
        raise OSError(
            f"port {port} on {host} is already in use: stop what uses it, or pick another port "
            f"with --port{hint}."
        )
    if reason.errno == errno.EACCES:
        raise OSError(
            f"port {port} on {host} needs more privileges (ports below 1024 usually do): pick "
            "another with --port, e.g. --port 8000."
        )
    raise OSError(
        f"cannot listen on {host}:{port} ({reason.strerror or reason}): check --host (an "
        "address of this machine, e.g. 127.0.0.1) and --port."
    )


def _bind_error(host: str, port: int) -> OSError | None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:  # socket.gaierror included: an unknown host
        return exc
    return None


class _LineHandler(logging.Handler):
    """Log records as lines on stderr, written between progress-bar updates (tqdm.write), with
    the names they quote (a dataset folder, a baseline) made terminal-safe."""

    def __init__(self, prefix: str):
        super().__init__(logging.INFO)
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"{self.prefix}: {terminal_safe(record.getMessage())}", file=sys.stderr)


@contextlib.contextmanager
def phase_lines(prefix: str, logger: str = "cde_rag") -> Iterator[None]:
    """Show cde-rag's INFO log lines (the phases of a long run) on stderr meanwhile."""
    target = logging.getLogger(logger)
    handler, level = _LineHandler(prefix), target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
