"""Where cde-rag's files live: the user's data and cache folders, and the files it ships.

One lookup for every command and app, so `index`, `query`, the server and the demo agree on
where things are whatever the working folder, and nothing at runtime reads the source tree
(`tests/`, `demo/`, `examples/`): what the package needs ships under `cde_rag/assets/`.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

APP = "cde-rag"


def data_dir(*parts: str, env: str | None = None) -> Path:
    """$`env` when set, else $XDG_DATA_HOME/cde-rag/`parts` (~/.local/share/cde-rag/...)."""
    return _user_dir("XDG_DATA_HOME", Path(".local") / "share", parts, env)


def cache_dir(*parts: str, env: str | None = None) -> Path:
    """$`env` when set, else $XDG_CACHE_HOME/cde-rag/`parts` (~/.cache/cde-rag/...)."""
    return _user_dir("XDG_CACHE_HOME", Path(".cache"), parts, env)


def asset(*parts: str) -> Path:
    """A file or folder shipped inside the package, under `cde_rag/assets/`."""
    root = files("cde_rag").joinpath("assets", *parts)
    if not isinstance(root, Path):  # only a zipped install lacks real paths
        raise OSError(
            "cde-rag's assets are not on the file system (a zipped install); install cde-rag "
            "with pip into a regular environment."
        )
    return root


def _user_dir(variable: str, fallback: Path, parts: tuple[str, ...], env: str | None) -> Path:
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    # The XDG spec: a relative path in these variables is invalid and is ignored.
    base = os.environ.get(variable, "")
    root = Path(base) if os.path.isabs(base) else Path.home() / fallback
    return root.joinpath(APP, *parts)


__all__ = ["asset", "cache_dir", "data_dir"]
