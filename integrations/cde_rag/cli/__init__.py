"""`cde-rag`: the command line. Each subcommand lives in `cde_rag.cli.<name>`.

A command module defines `HELP` (one line for `cde-rag --help`), `add_arguments(parser)` and
`run(args) -> int`, and imports its heavy dependencies inside `run`, so `cde-rag --help` and
argument errors stay instant. `main()` turns user errors into one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from ..errors import CDEError

COMMANDS = ("index", "query", "load", "context", "serve", "demo", "bench", "eval")
DEBUG_ENV = "CDE_RAG_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cde-rag",
        description="Contextual document embeddings (cde-small-v2) for RAG: index files into "
        "Chroma, query them, manage corpus contexts, serve an embeddings API, run the demo.",
        epilog=f"Run 'cde-rag COMMAND --help' for a command's options. Set {DEBUG_ENV}=1 to "
        "see tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"cde-rag {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        sub = commands.add_parser(name, help=module.HELP, description=_description(module))
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _description(module: ModuleType) -> str:
    """`--help` text: the one-line HELP, then the module docstring after its title line."""
    _, _, details = (module.__doc__ or "").strip().partition("\n")
    summary = module.HELP[:1].upper() + module.HELP[1:] + "."
    return f"{summary} {details.strip()}".strip()


def _is_user_error(exc: BaseException) -> bool:
    """Bad input or environment (shown as one line), as opposed to a bug (a traceback)."""
    if isinstance(exc, ModuleNotFoundError):  # an optional dependency is not installed
        return bool(exc.name) and exc.name.split(".")[0] != "cde_rag"
    errors: list[type[BaseException]] = [CDEError, ValueError, OSError]
    chroma = sys.modules.get("chromadb.errors")
    if chroma is not None:
        errors.append(chroma.ChromaError)
    return isinstance(exc, tuple(errors))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return (
            f"missing package {exc.name!r}; install the extras this command needs, e.g. "
            "pip install 'cde-rag[all]'"
        )
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cde-rag` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("cde-rag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) or not _is_user_error(exc):
            raise
        print(f"cde-rag {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


__all__ = ["COMMANDS", "build_parser", "main"]
