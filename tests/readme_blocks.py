"""README.md's code blocks, read as `tests/test_readme.py` runs them, and the Python driver.

A block is a fenced code block (```python, ```bash, ```text; indented ones inside list items
too). An HTML comment on the last non-blank line before the fence tells the test how to treat
it:

    <!-- readme-test: skip: REASON -->        not run (installs packages, a cluster, a GPU ...)
    <!-- readme-test: pending: REASON -->     not run yet: a known failure, to be fixed
    <!-- readme-test: slow: REASON -->        run only with the slow tests
    <!-- readme-test: background URL -->      a server: started, ready once URL answers, and
                                              stopped when its section ends

Run as a script, this module is the driver for one section's Python blocks: it executes the
blocks it reads from stdin (one JSON object a line) in one namespace, and answers on the file
descriptor given as its argument, so what the blocks print goes to stdout/stderr untouched.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import traceback
from dataclasses import dataclass

RUN_LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
SAMPLE_LANGUAGES = {"text"}
DIRECTIVES = ("skip", "pending", "slow", "background")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<kind>[\w-]+):?\s*(?P<arg>.*?)\s*-->\s*$")
_SECTION = re.compile(r"^## (?P<title>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # the line of the opening fence, 1-based
    lang: str
    code: str  # dedented, without the fences
    section: str  # the top-level (##) section it is in
    directive: str | None = None  # skip, pending, slow, background
    argument: str = ""  # the directive's reason (or URL for background)

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.section})"


def parse(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with its section and directive."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = "(top)"
    i = 0
    while i < len(lines):
        if heading := _SECTION.match(lines[i]):
            section = heading["title"]
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, indent = i, fence["indent"]
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: code block is never closed")
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[start + 1 : i]
        ]
        kind, argument = _directive_before(lines, start)
        blocks.append(
            Block(
                line=start + 1,
                lang=fence["lang"],
                code=textwrap.dedent("\n".join(body)) + "\n",
                section=section,
                directive=kind,
                argument=argument,
            )
        )
        i += 1
    return blocks


def _directive_before(lines: list[str], fence: int) -> tuple[str | None, str]:
    before = fence - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before < 0 or not (found := _DIRECTIVE.match(lines[before])):
        return None, ""
    if found["kind"] not in DIRECTIVES:
        raise ValueError(
            f"README.md:{before + 1}: unknown readme-test directive {found['kind']!r}; "
            f"use one of {', '.join(DIRECTIVES)}"
        )
    return found["kind"], found["arg"]


def sections(text: str) -> dict[str, str]:
    """Each top-level section's title and text (its subsections included)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_code = False
    for line in text.splitlines():
        if _FENCE.match(line) or line.strip() == "```":
            in_code = not in_code
        if not in_code and (heading := _SECTION.match(line)):
            current = found.setdefault(heading["title"], [])
        elif current is not None:
            current.append(line)
    return {title: "\n".join(body) for title, body in found.items()}


def _serve(answers_fd: int) -> None:
    """Run the Python blocks read from stdin in one namespace; answer one JSON line each."""
    answers = os.fdopen(answers_fd, "w", buffering=1)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for request in sys.stdin:
        block = json.loads(request)
        os.environ.clear()
        os.environ.update(block["env"])
        # Leading newlines make tracebacks give README.md's own line numbers.
        source = "\n" * block["line"] + block["code"]
        try:
            exec(compile(source, "README.md", "exec"), namespace)
            answer = {"ok": True}
        except BaseException as exc:
            # The block's frames only, not this driver's.
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
            answer = {"ok": False, "error": "".join(lines)}
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
