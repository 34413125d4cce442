"""README.md runs as written: every code block is executed against the tiny checkpoint.

Blocks run section by section (one test per top-level `##` section), in README order. All
Python blocks of a section share one namespace, in one interpreter (`readme_blocks.py`'s
driver): a reader who jumps to a section copies that section's blocks, so each section defines
what it uses, and no section depends on another one's names. A section is the unit of what the
README's text builds up ("the collection made above"), so its blocks may use each other's
names; a whole-file namespace would hide a section that only works after another one.

Shell blocks run with bash (`set -euo pipefail`, so an undefined variable fails) in the same
scratch world, one shell session per section: what a block exports is seen by later shell and
Python blocks of the section, as in a terminal where the reader runs both.

The scratch world stands in for the reader's machine, so nothing touches the user's folders:
a temporary HOME (with XDG_DATA_HOME, XDG_CACHE_HOME and HF_HOME under it, the hub offline)
and a temporary working folder, with `cde-rag` on PATH from this virtualenv. It holds the
reader's own files the README points at: `~/notes`, `~/papers/report.pdf`, `~/corpus`, `docs/`
and `data/mydata` (a BEIR dataset), all made from the package's bundled samples. The model id
`jxm/cde-small-v2` in a block is replaced by the tiny checkpoint's path; where a command uses
it by default, the folder `jxm/cde-small-v2` in the working folder is that checkpoint (a
folder wins over the hub id of that spelling). `.venv` and `tests/fixtures` link to the
checkout's, for the Quick start's paths. Ports a block names (`127.0.0.1:8000`,
`--port 7861`) are replaced by free ones, the same within a section.

HTML comments before a block mark what cannot run here (see `readme_blocks.py`); the skipped
and pending blocks are listed as skipped / xfailed tests with their reasons.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from readme_blocks import RUN_LANGUAGES, SAMPLE_LANGUAGES, Block, parse, sections
from test_documents import make_pdf

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DRIVER = Path(__file__).with_name("readme_blocks.py")
TINY = ROOT / "tests" / "fixtures" / "tiny-cde-v2"
MODEL_ID = "jxm/cde-small-v2"
BLOCKS = parse(README.read_text(encoding="utf-8"))
BLOCK_TIMEOUT_S = 600
SERVER_START_S = 300

_PORT = re.compile(r"(?:(?<=127\.0\.0\.1:)|(?<=localhost:)|(?<=--port ))(\d{4,5})\b")


def _runnable(block: Block) -> bool:
    return block.lang in RUN_LANGUAGES and block.directive not in ("skip", "pending")


def _sections_to_run() -> list:
    params = []
    for title in dict.fromkeys(block.section for block in BLOCKS):
        blocks = [block for block in BLOCKS if block.section == title]
        if not any(_runnable(block) for block in blocks):
            continue
        slow = any(block.directive in ("slow", "background") for block in blocks)
        marks = [pytest.mark.slow] if slow else []
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
        params.append(pytest.param(title, marks=marks, id=slug))
    return params


# --- the scratch world ----------------------------------------------------------------------


NOTES = {
    "bank.md": "# Bank\n\nThe mortgage payment is due on the first of each month. Late payments "
    "cost a fee of 25 euros.\n\nThe savings account pays 2% interest a year.\n",
    "2024/todo.md": "# To do\n\n- Renew the passport before the trip in May.\n- Call the "
    "plumber about the kitchen tap.\n",
    "garden.txt": "Tomatoes need six hours of sun a day. Water them at the roots, not the leaves.",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class World:
    """A reader's machine in a temporary folder: home, working folder, environment."""

    root: Path
    home: Path = field(init=False)
    work: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    ports: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.work = self.root / "work"
        samples = files("cde_rag") / "assets" / "samples"
        for folder in (self.home / "corpus", self.work / "docs"):
            folder.mkdir(parents=True)
            for sample in samples.iterdir():
                (folder / sample.name).write_bytes(sample.read_bytes())
        for name, text in NOTES.items():
            (self.home / "notes" / name).parent.mkdir(parents=True, exist_ok=True)
            (self.home / "notes" / name).write_text(text)
        (self.home / "papers").mkdir()
        (self.home / "papers" / "report.pdf").write_bytes(
            make_pdf(["Quarterly report: revenue grew by 4 percent.", "Costs stayed flat."])
        )
        (self.work / "data").mkdir()
        shutil.copytree(
            str(files("cde_rag") / "assets" / "eval-sample"), self.work / "data" / "mydata"
        )
        (self.work / "jxm").mkdir()
        (self.work / "jxm" / "cde-small-v2").symlink_to(TINY)
        (self.work / ".venv").symlink_to(sys.prefix)
        (self.work / "tests").mkdir()
        (self.work / "tests" / "fixtures").symlink_to(TINY.parent)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDE_RAG_", "PYTHON"))}
        env.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            HF_HOME=str(self.home / ".cache" / "huggingface"),
            HF_HUB_OFFLINE="1",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            ANONYMIZED_TELEMETRY="False",
            GRADIO_ANALYTICS_ENABLED="False",
            RAY_USAGE_STATS_ENABLED="0",
            MPLBACKEND="Agg",
            PYTHONUNBUFFERED="1",
        )
        self.env = env

    def substitute(self, code: str) -> str:
        """The block as it runs here: the tiny model, and free ports for the README's ports."""
        code = code.replace(MODEL_ID, str(TINY))
        return _PORT.sub(lambda m: self.ports.setdefault(m[1], str(_free_port())), code)


# --- running a section ----------------------------------------------------------------------


class BlockFailed(AssertionError):
    def __init__(self, block: Block, code: str, error: str, output: str) -> None:
        super().__init__(
            f"{block.where} failed.\n--- block (as run) ---\n{code}--- error ---\n"
            f"{error.strip()}\n--- output (last 4000 characters) ---\n{output[-4000:]}"
        )


class Section:
    """One section's run: a Python interpreter, a shell environment, background servers."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.env = dict(world.env)
        self.log = world.root / "python-output.log"
        self.python: subprocess.Popen | None = None
        self.answers = None
        self.servers: list[tuple[subprocess.Popen, Path]] = []

    def run(self, block: Block) -> None:
        code = self.world.substitute(block.code)
        if block.lang == "python":
            self._python(block, code)
        elif block.directive == "background":
            self._background(block, code)
        else:
            self._shell(block, code)

    def _python(self, block: Block, code: str) -> None:
        if self.python is None:
            read, write = os.pipe()
            self.python = subprocess.Popen(
                [sys.executable, str(DRIVER), str(write)],
                stdin=subprocess.PIPE,
                stdout=self.log.open("ab"),
                stderr=subprocess.STDOUT,
                cwd=self.world.work,
                env=self.env,
                pass_fds=(write,),
                text=True,
            )
            os.close(write)
            self.answers = os.fdopen(read)
        start = self.log.stat().st_size
        request = {"line": block.line, "code": code, "env": self.env}
        self.python.stdin.write(json.dumps(request) + "\n")
        self.python.stdin.flush()
        # poll, not select: a long test session can hold more than 1024 descriptors.
        waiting = select.poll()
        waiting.register(self.answers, select.POLLIN)
        ready = waiting.poll(BLOCK_TIMEOUT_S * 1000)
        line = self.answers.readline() if ready else ""
        output = self.log.read_bytes()[start:].decode(errors="replace")
        if not line:
            error = "timed out" if not ready else "the Python driver exited"
            raise BlockFailed(block, code, error, output)
        answer = json.loads(line)
        if not answer["ok"]:
            raise BlockFailed(block, code, answer["error"], output)

    def _shell(self, block: Block, code: str) -> None:
        env_file = self.world.root / "shell-env"
        script = f'set -euo pipefail\n{code}\nenv -0 > "$README_TEST_ENV_FILE"\n'
        try:
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-c", script],
                cwd=self.world.work,
                env={**self.env, "README_TEST_ENV_FILE": str(env_file)},
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise BlockFailed(block, code, "timed out", str(exc.stdout or "")) from None
        if done.returncode != 0:
            error = f"exit status {done.returncode}"
            raise BlockFailed(block, code, error, done.stdout + done.stderr)
        exported = dict(
            item.partition("=")[::2] for item in env_file.read_text().split("\0") if "=" in item
        )
        for name in ("README_TEST_ENV_FILE", "PWD", "OLDPWD", "SHLVL", "_"):
            exported.pop(name, None)
        self.env = exported

    def _background(self, block: Block, code: str) -> None:
        url = self.world.substitute(block.argument)
        log = self.world.root / f"server-{block.line}.log"
        server = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", f"set -euo pipefail\n{code}"],
            cwd=self.world.work,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.servers.append((server, log))
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if server.poll() is not None:
                error = f"the server exited with status {server.returncode} before {url} answered"
                raise BlockFailed(block, code, error, log.read_text(errors="replace"))
            try:
                urllib.request.urlopen(url, timeout=5).close()
                return
            except urllib.error.HTTPError:
                return  # it answers; what it answers is for the blocks that follow
            except OSError:
                time.sleep(0.5)
        raise BlockFailed(block, code, f"{url} did not answer", log.read_text(errors="replace"))

    def close(self) -> None:
        if self.python is not None:
            self.python.stdin.close()
            try:
                self.python.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.python.kill()
                self.python.wait()
            self.answers.close()
        for server, _ in self.servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    yield World(tmp_path)


@pytest.mark.parametrize("title", _sections_to_run())
def test_section_runs_as_written(title, world):
    section = Section(world)
    try:
        for block in BLOCKS:
            if block.section == title and _runnable(block):
                section.run(block)
    finally:
        section.close()


# --- what is not run, and why ---------------------------------------------------------------


def test_every_block_is_run_or_a_sample():
    """An unknown language would silently escape the test; samples carry no directive."""
    unknown = [b.where for b in BLOCKS if b.lang not in {*RUN_LANGUAGES, *SAMPLE_LANGUAGES}]
    assert not unknown, (
        f"blocks with no or an unknown language (use python, bash or text): {unknown}"
    )
    marked = [b.where for b in BLOCKS if b.lang in SAMPLE_LANGUAGES and b.directive]
    assert not marked, f"text blocks are never run; drop their readme-test comment: {marked}"
    silent = [b.where for b in BLOCKS if b.directive in ("skip", "pending") and not b.argument]
    assert not silent, f"skip and pending need a reason: {silent}"


_NOT_RUN = [b for b in BLOCKS if b.directive in ("skip", "pending")]


@pytest.mark.parametrize("block", _NOT_RUN, ids=[f"line-{b.line}" for b in _NOT_RUN])
def test_block_not_run(block):
    """Each block the README marks as not run, listed with its reason in the summary."""
    if block.directive == "pending":
        pytest.xfail(f"{block.where} pending: {block.argument}")
    pytest.skip(f"{block.where}: {block.argument}")


# --- install: every import is covered by the [all] extra ------------------------------------


def _requirement_names(extra: str) -> set[str]:
    """Distribution names `pip install cde-rag[extra]` asks for, extras expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name for r in project["dependencies"]}
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for text in project["optional-dependencies"][current]:
            requirement = Requirement(text)
            if requirement.name == project["name"]:
                todo.extend(requirement.extras - seen)
            else:
                names.add(requirement.name)
    return {_normalise(name) for name in names}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _owner(module: str) -> str | None:
    """The installed distribution that provides `module` (a dotted name), if any."""
    path = module.replace(".", "/")
    wanted = {f"{path}/__init__.py", f"{path}.py"}
    candidates = importlib.metadata.packages_distributions().get(module.partition(".")[0], [])
    for name in dict.fromkeys(candidates):
        records = importlib.metadata.distribution(name).files or ()
        if any(file.as_posix() in wanted for file in records):
            return name
    return None


def _imported_modules(code: str) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_every_readme_import_is_installed_by_the_all_extra():
    wanted = _requirement_names("all")
    missing = []
    for block in BLOCKS:
        if block.lang != "python":
            continue
        for module in sorted(_imported_modules(block.code)):
            top = module.partition(".")[0]
            if top in sys.stdlib_module_names or top == "cde_rag":
                continue
            owner = _owner(module)
            if owner is None:
                missing.append(f"{block.where}: {module} is not installed here")
            elif _normalise(owner) not in wanted:
                missing.append(f"{block.where}: {module} comes from {owner}, not in cde-rag[all]")
    assert not missing, "\n".join(missing)


# --- the project layout is a true map -------------------------------------------------------


def _layout_paths() -> set[str]:
    """The paths the "Project layout" tree names under integrations/cde_rag/."""
    text = sections(README.read_text(encoding="utf-8"))["Project layout"]
    tree = re.search(r"```text\n(.*?)```", text, re.S)
    assert tree, "the Project layout section has no ```text tree"
    paths: set[str] = set()
    parents: list[tuple[int, str]] = []
    for line in tree[1].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = "/".join([*(p for _, p in parents), name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            parents.append((indent, name.rstrip("/")))
    return paths


def test_project_layout_names_every_module_and_nothing_else():
    """One line per module of the package (and each subpackage and asset folder), none stale."""
    package = ROOT / "integrations" / "cde_rag"
    wanted = {
        p.relative_to(ROOT).as_posix()
        for p in [*package.rglob("*.py"), *(package / "assets").iterdir()]
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    wanted |= {p.parent.relative_to(ROOT).as_posix() for p in package.rglob("__init__.py")}
    listed = _layout_paths()
    assert not wanted - listed, f"missing from the Project layout: {sorted(wanted - listed)}"
    stale = sorted(p for p in listed if not (ROOT / p).exists())
    assert not stale, f"the Project layout names what does not exist: {stale}"
