"""`cde-rag`: the command line. Each subcommand lives in `cde_rag.cli.<name>`.

A command module defines `HELP` (one line for `cde-rag --help`), `add_arguments(parser)` and
`run(args) -> int`, and imports its heavy dependencies inside `run`, so `cde-rag --help` and
argument errors stay instant. Before `run`, `main()` checks what needs no model
(`_common.preflight`: chunk sizes that fit together, a free --port).

Exit status: 0 done, 1 a runtime error (bad file, unreachable server, taken port: one line on
stderr), 2 a usage error (unknown command or option, bad option value, options that do not fit
together; shown with the usage, and a bare `cde-rag` prints the help), 130 interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import NoReturn

from ..errors import CDEError
from ._common import UsageError, preflight
from ._text import terminal_safe

COMMANDS = ("index", "query", "load", "context", "serve", "demo", "bench", "eval")
DEBUG_ENV = "CDE_RAG_DEBUG"


class Parser(argparse.ArgumentParser):
    """argparse, plus "did you mean ...?" for a mistyped command or option; what the message
    quotes from the command line is printed escaped (`_text`)."""

    def error(self, message: str) -> NoReturn:
        super().error(terminal_safe(message + suggestion(self, message)))


def suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """' (did you mean X?)' for the first bad word in an argparse error, or ''."""
    found = re.search(r"invalid choice: '?([^' ]*)'?", message)
    if found:
        words, candidates = [found.group(1)], _choices(parser)
    else:
        found = re.search(r"unrecognized arguments: (.*)", message)
        words = (
            [w.split("=")[0] for w in found.group(1).split() if w.startswith("-")] if found else []
        )
        candidates = _options(parser)
    for word in words:
        close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]!r}?)"
    return ""


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every parser under it (commands, and actions such as `context fit`)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _subparsers(sub)


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    return [str(c) for action in parser._actions for c in action.choices or ()]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for p in _subparsers(parser) for a in p._actions for o in a.option_strings]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
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
        sub.set_defaults(run=module.run, command_parser=sub)
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
    """The error on one line, with the paths, texts and URLs it quotes made terminal-safe."""
    return terminal_safe(_message(exc))


def _message(exc: BaseException) -> str:
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
    """Entry point of the `cde-rag` script; returns the process exit code (a usage error
    raises SystemExit(2), as argparse does)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:  # the command's own parser knows its options, to suggest the one meant
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        preflight(args)
        return int(args.run(args) or 0)
    except UsageError as exc:
        args.command_parser.error(str(exc))
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
