"""Named corpus contexts kept as files, and the one way cde-rag writes a context file.

`ContextStore` is what the embeddings server serves (`<folder>/<id>.safetensors`), and
`write_context_file` is how both the server and `cde-rag context fit|save` put a context on
disk: never over an existing file by accident, atomically, and with a plain message when the
disk is full. Both speak in domain errors (subclasses of `ContextStoreError`); the server maps
them to HTTP statuses in one table, the CLI prints them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import errors
from .context import CorpusContext
from .errors import CDEError, ContextError

if TYPE_CHECKING:
    from .model import CDEModel

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_ID = "default"
CONTEXT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


# -- errors ------------------------------------------------------------------------------------


class ContextStoreError(CDEError):
    """A stored-context operation that cannot be done; `param` names the input at fault."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidContextIdError(ContextStoreError, ValueError):
    """A context id that can never name a file (or names the reserved default context)."""


class ContextNotFoundError(ContextStoreError, LookupError):
    """No context is stored under this id."""


class ContextExistsError(ContextStoreError, FileExistsError):
    """The id or file is taken by another context; nothing is overwritten silently."""


class ContextUnusableError(ContextStoreError, ContextError):
    """A context file is stored under this id but cannot be used (corrupted, other model)."""


class ContextStorageError(ContextStoreError, OSError):
    """The file system refused to store a context (permissions, read-only, I/O error)."""


class StorageFullError(ContextStorageError, errors.StorageFullError):
    """No space left (or quota exceeded) where a context was being written."""


# -- files -------------------------------------------------------------------------------------


def check_context_target(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Where a context file may be written: not a folder, and not an existing file unless
    `overwrite`. Call it before slow work (fitting) as well as at the write."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise IsADirectoryError(f"-o must be a file path, but {target} is a folder.")
    if target.exists() and not overwrite:
        raise ContextExistsError(f"{target} exists; pass --force to overwrite it.")
    return target


def write_context_file(
    ctx: CorpusContext, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Save `ctx` to `path` atomically: the old file or the new one, never half of one; a
    failed write leaves nothing behind."""
    target = check_context_target(path, overwrite=overwrite)
    try:
        return ctx.save(target)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise StorageFullError(
                f"No space left on the device holding {target} ({exc.strerror}); nothing was "
                "written and the contexts stored before are intact. Free some space there, or "
                "store contexts on another disk (cde-rag serve --data DIR)."
            ) from None
        raise ContextStorageError(
            f"Cannot write the context file {target} ({exc.strerror or exc}); nothing was "
            "written. Check that the folder is writable."
        ) from None


# -- ids ---------------------------------------------------------------------------------------


def check_context_id(context_id: str, param: str = "context") -> str:
    """The canonical (lower-case) form of a context id.

    Ids become file names, so only letters, digits, '-' and '_' (no paths, no dots), and they
    are case-insensitive: `MyCorpus` and `mycorpus` would be one file on macOS and Windows.
    """
    if not CONTEXT_ID_PATTERN.fullmatch(context_id):
        raise InvalidContextIdError(
            f"Invalid context id {context_id!r}: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit.",
            param=param,
        )
    return context_id.lower()


def is_default_id(context_id: str | None) -> bool:
    """Whether a request names the server's default context (any spelling, or none)."""
    return context_id is None or context_id.lower() == DEFAULT_CONTEXT_ID


def context_object(
    context_id: str, ctx: CorpusContext, sample: int = 5, model_label: str | None = None
) -> dict[str, Any]:
    """A context as the API lists it; `model_label` replaces the model's load path."""
    info = ctx.describe(sample)
    if model_label is not None:
        info["model"] = model_label
    return {"object": "context", "id": context_id, "usable": True, **info}


class ContextStore:
    """The named contexts of one model, each saved as `<folder>/<id>.safetensors`.

    Files that cannot be used (corrupted, made by another model, or two files whose names
    differ only in case) are reported and left untouched on disk, and their ids stay taken
    until deleted explicitly.
    """

    def __init__(self, model: CDEModel, folder: Path):
        self.model = model
        self.folder = folder
        # `_lock` guards the dicts for a moment; `_write_lock` orders the slow disk writes,
        # so requests that only read a context never wait for an fsync.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._contexts: dict[str, CorpusContext] = {}
        self._unusable: dict[str, str] = {}
        self._files: dict[str, list[Path]] = {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ContextStorageError(
                f"Cannot create the context folder {folder} ({exc.strerror or exc}); choose "
                "a writable folder with --data."
            ) from None
        for path in sorted(folder.glob("*.safetensors")):
            self._load(path)

    def _load(self, path: Path) -> None:
        stem = path.stem
        if not CONTEXT_ID_PATTERN.fullmatch(stem) or is_default_id(stem):
            log.warning("Ignoring %s: its name is not a valid context id.", path)
            return
        context_id = stem.lower()
        files = self._files.setdefault(context_id, [])
        files.append(path)
        if len(files) > 1:
            self._contexts.pop(context_id, None)
            names = " and ".join(p.name for p in files)
            reason = (
                f"{names} both claim the id {context_id!r} (ids are case-insensitive); move "
                "one of them out of the folder."
            )
            self._unusable[context_id] = reason
            log.warning("Context %r is stored but unusable: %s", context_id, reason)
            return
        try:
            self._contexts[context_id] = self.model.check_context(CorpusContext.load(path))
        except (ContextError, OSError) as exc:
            self._unusable[context_id] = str(exc)
            log.warning("Context %r is stored but unusable: %s", context_id, exc)

    def __len__(self) -> int:
        with self._lock:
            return len(self._contexts) + len(self._unusable)

    def path(self, context_id: str) -> Path:
        """Where a new context with this (canonical) id is written."""
        return self.folder / f"{context_id}.safetensors"

    def get(self, context_id: str, param: str = "context") -> CorpusContext:
        context_id = check_context_id(context_id, param)
        with self._lock:
            ctx = self._contexts.get(context_id)
            reason = self._unusable.get(context_id)
        if ctx is not None:
            return ctx
        if reason is not None:
            raise ContextUnusableError(
                f"Context {context_id!r} is stored but unusable: {reason}", param=param
            )
        raise _not_found(context_id, param)

    def describe(self, context_id: str, model_label: str | None = None) -> dict[str, Any]:
        context_id = check_context_id(context_id, "context_id")
        with self._lock:
            reason = self._unusable.get(context_id)
        if reason is not None:
            return {"object": "context", "id": context_id, "usable": False, "error": reason}
        ctx = self.get(context_id, "context_id")
        return context_object(context_id, ctx, model_label=model_label)

    def list(self, model_label: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            usable = sorted(self._contexts.items())
            unusable = sorted(self._unusable.items())
        return [
            context_object(cid, ctx, sample=0, model_label=model_label) for cid, ctx in usable
        ] + [
            {"object": "context", "id": cid, "usable": False, "error": reason}
            for cid, reason in unusable
        ]

    @staticmethod
    def check_new_id(context_id: str) -> str:
        """Refuse an id that can never be created, before any slow fitting starts."""
        context_id = check_context_id(context_id, "id")
        if is_default_id(context_id):
            raise InvalidContextIdError(
                "The id 'default' names the server's default context; choose another id.",
                param="id",
            )
        return context_id

    def add(self, ctx: CorpusContext, context_id: str | None) -> tuple[str, CorpusContext, bool]:
        """Store `ctx`; returns (id, stored context, created). Adding the same context (the same
        numbers: two fits of one recipe in different dtypes are two contexts) under the same id
        again returns the stored one. Without an id, the checksum names it, so two contexts
        never claim one id."""
        context_id = self.check_new_id(context_id or f"ctx-{ctx.checksum[:16]}")
        with self._write_lock:
            with self._lock:
                existing = self._contexts.get(context_id)
                taken = existing is not None or context_id in self._unusable
            if existing is not None and existing == ctx:
                return context_id, existing, False
            if taken:
                raise ContextExistsError(
                    f"Context id {context_id!r} is taken by another context. Choose another "
                    f"id, or delete {context_id!r} first.",
                    param="id",
                )
            path = write_context_file(ctx, self.path(context_id), overwrite=True)
            with self._lock:
                self._contexts[context_id] = ctx
                self._files[context_id] = [path]
        return context_id, ctx, True

    def delete(self, context_id: str) -> str:
        """Remove the context and its file(s); returns the canonical id."""
        context_id = check_context_id(context_id, "context_id")
        with self._write_lock:
            with self._lock:
                known = context_id in self._contexts or context_id in self._unusable
                files = self._files.get(context_id, [])
            if not known:
                raise _not_found(context_id, "context_id")
            for path in files:
                path.unlink(missing_ok=True)
            with self._lock:
                self._contexts.pop(context_id, None)
                self._unusable.pop(context_id, None)
                self._files.pop(context_id, None)
        return context_id


def _not_found(context_id: str, param: str) -> ContextNotFoundError:
    return ContextNotFoundError(
        f"No context with id {context_id!r}. List the stored ones (GET /v1/contexts), or "
        "create it (POST /v1/contexts).",
        param=param,
    )
