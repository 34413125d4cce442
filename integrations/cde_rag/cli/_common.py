"""Options and helpers shared by the `cde-rag` commands: the model, and where Chroma lives."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from ..model import CDEModel

DEFAULT_MODEL = "jxm/cde-small-v2"
DB_ENV = "CDE_RAG_DB"
CHROMA_URL_ENV = "CDE_RAG_CHROMA_URL"


def port(value: str) -> int:
    """An argparse type: a TCP port."""
    number = int(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {number}")
    return number


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {number}")
    return number


def add_model_arguments(
    parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL
) -> None:
    """--model, --revision, --device, --dtype. `default=None` means: the one stored with the
    collection (commands that open an existing collection)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=default,
        metavar="ID_OR_PATH",
        help=f"hub id or local checkpoint folder (default: {default})"
        if default
        else "hub id or local checkpoint folder (default: the one the collection was indexed "
        f"with; {DEFAULT_MODEL} when `index` creates the collection)",
    )
    group.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    group.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if present)"
    )
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


def default_db() -> Path:
    """$CDE_RAG_DB, else $XDG_DATA_HOME/cde-rag/chroma (~/.local/share/cde-rag/chroma): one
    place, whatever the working folder, so `index` and `query` find the same collections."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "cde-rag" / "chroma"


def add_store_arguments(parser: argparse.ArgumentParser, *, collection: bool = True) -> None:
    """--collection, and either --db DIR (a local Chroma folder) or --chroma-url URL."""
    group = parser.add_argument_group("Chroma store")
    if collection:
        group.add_argument(
            "--collection", "-c", required=True, metavar="NAME", help="Chroma collection name"
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
        default=os.environ.get(CHROMA_URL_ENV),
        metavar="URL",
        help=f"a Chroma server, e.g. http://127.0.0.1:8000 (default: ${CHROMA_URL_ENV})",
    )


def open_client(args: argparse.Namespace, *, create: bool = False) -> ClientAPI:
    """A Chroma client for --db or --chroma-url, with Chroma's telemetry off. A missing --db
    folder is created only when `create` (indexing); reading commands say it is missing."""
    import chromadb

    settings = chromadb.Settings(anonymized_telemetry=False)
    if args.chroma_url and args.db is None:
        url = urlsplit(args.chroma_url if "//" in args.chroma_url else f"http://{args.chroma_url}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"--chroma-url must look like http://HOST:PORT, got {args.chroma_url!r}."
            )
        try:
            port = url.port or (443 if url.scheme == "https" else 8000)
        except ValueError:
            raise ValueError(f"--chroma-url has an invalid port: {args.chroma_url!r}.") from None
        try:
            return chromadb.HttpClient(
                host=url.hostname, port=port, ssl=url.scheme == "https", settings=settings
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
