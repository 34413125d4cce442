"""Hub access for checkpoints: one repo pinned to one commit, read from the cache when there.

A revision is resolved to one commit per load (one request, no retries, so a dead network
fails in a moment), and every file of that repo is read at that commit. An optional file
counts as absent only when the hub says so (a 404, which huggingface_hub records in its cache
under `.no_exist`); when that cannot be known (offline, a connection error), the caller gets a
`CheckpointError` with the remedy instead of something else.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .errors import CheckpointError

log = logging.getLogger(__name__)

# What cde-rag reads of the backbone repo (never its weights: the checkpoint holds them).
BACKBONE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def download_command() -> str:
    """The download command of the installed huggingface_hub (`hf` since 0.34)."""
    import huggingface_hub

    major, minor = (int(p) for p in re.findall(r"\d+", huggingface_hub.__version__)[:2])
    return "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"


def offline_remedy(repo_id: str, revision: str | None = None, backbone: bool = False) -> str:
    """What to run where the hub can be reached, in the installed huggingface_hub's words."""
    command = download_command()
    at = f" --revision {revision}" if revision else ""
    if backbone:
        what = f"`{command} {repo_id} {' '.join(BACKBONE_FILES)}{at}`"
    else:
        what = (
            f"`{command} {repo_id}{at}` and its backbone's config and tokenizer, "
            f"`{command} answerdotai/ModernBERT-base {' '.join(BACKBONE_FILES)}`"
        )
    return (
        f"Download it where the hub can be reached ({what}), copy the hub cache (HF_HUB_CACHE) "
        "here and set HF_HUB_OFFLINE=1, or pass a local checkpoint folder instead of a hub id."
    )


class HubSnapshot:
    """One hub repo pinned to one commit: the revision is resolved once, then every file is
    read at that commit, from the cache when it is there."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None,
        *,
        cache_dir: str | os.PathLike[str] | None,
        token: str | bool | None,
        backbone: bool = False,
    ):
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise CheckpointError(
                f"{repo_id!r} is neither an existing folder nor a valid hub id ({exc})."
            ) from exc
        self.repo_id = repo_id
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.token = token
        self.online = False
        self.commit = self._resolve(revision or "main")

    def _resolve(self, revision: str) -> str:
        """The commit `revision` names: asked of the hub once (one HEAD, no retries, so a dead
        network fails in a moment), else read from the cache's refs."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import (
            EntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        url = hf_hub_url(self.repo_id, "config.json", revision=revision)
        try:
            commit = get_hf_file_metadata(url, token=self.token).commit_hash
        except RepositoryNotFoundError as exc:
            raise CheckpointError(
                f"{self.repo_id!r} was not found on the hub: check the name, or log in "
                f"(`{download_command().split()[0]} auth login`) for a private or gated repo."
            ) from exc
        except RevisionNotFoundError as exc:
            raise CheckpointError(
                f"{self.repo_id!r} has no revision {revision!r} on the hub: pass a branch, tag "
                "or commit that exists."
            ) from exc
        except EntryNotFoundError as exc:
            raise CheckpointError(
                f"{self.repo_id!r} at {revision} has no config.json: it is not a checkpoint "
                "cde-rag can load."
            ) from exc
        except Exception as exc:  # offline mode, no network, timeout, hub down: use the cache
            if isinstance(exc, OfflineModeIsEnabled):
                return self._cached_commit(
                    revision, "offline mode (HF_HUB_OFFLINE=1)", logging.INFO
                )
            reason = f"the hub could not be reached ({type(exc).__name__}: {exc})"
            return self._cached_commit(revision, reason, logging.WARNING)
        if commit is None or not _COMMIT.match(commit):
            raise CheckpointError(
                f"The hub endpoint did not say which commit {revision!r} of {self.repo_id!r} "
                "is (no X-Repo-Commit header): check HF_ENDPOINT and any proxy."
            )
        self.online = True
        if commit != revision:
            log.info("Loading %s at commit %s (%s).", self.repo_id, commit, revision)
        return commit

    def _cached_commit(self, revision: str, reason: str, level: int) -> str:
        if _COMMIT.match(revision):
            return revision
        ref = self._folder() / "refs" / revision
        if ref.is_file():
            commit = ref.read_text().strip()
            if _COMMIT.match(commit):
                log.log(
                    level,
                    "%s; loading %s at commit %s, its %r when last downloaded.",
                    reason[0].upper() + reason[1:],
                    self.repo_id,
                    commit,
                    revision,
                )
                return commit
        raise CheckpointError(
            f"Cannot load {self.repo_id!r} ({revision}): {reason}, and it is not in the local "
            f"hub cache ({self._folder().parent}). {self._remedy()}"
        )

    def _remedy(self, revision: str | None = None) -> str:
        return offline_remedy(self.repo_id, revision, backbone=self.backbone)

    def _folder(self) -> Path:
        from huggingface_hub import constants

        name = "models--" + self.repo_id.replace("/", "--")
        return Path(self.cache_dir or constants.HF_HUB_CACHE).expanduser() / name

    def _lookup(self, filename: str) -> Path | None:
        """The file at the pinned commit; None when the hub says it does not exist there."""
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        cached = try_to_load_from_cache(
            self.repo_id, filename, cache_dir=self.cache_dir, revision=self.commit
        )
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None:  # huggingface_hub's `.no_exist` record: a 404 seen before
            return None
        where = f"{filename} of {self.repo_id!r} at commit {self.commit}"
        if not self.online:
            raise CheckpointError(
                f"Cannot tell whether {where} exists: it is not in the local hub cache, and the "
                f"hub was not reachable to ask. {self._remedy(self.commit)}"
            )
        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    filename,
                    revision=self.commit,
                    cache_dir=self.cache_dir,
                    token=self.token,
                )
            )
        except LocalEntryNotFoundError as exc:  # a connection error or timeout mid-load
            raise CheckpointError(
                f"Could not download {where}: {exc}. Try again, or: {self._remedy(self.commit)}"
            ) from exc
        except EntryNotFoundError:
            return None
        except OSError as exc:  # any other hub or disk error
            raise CheckpointError(f"Could not download {where}: {exc}") from exc

    def require(self, filename: str) -> Path:
        path = self._lookup(filename)
        if path is None:
            raise CheckpointError(
                f"{self.repo_id!r} at commit {self.commit} has no {filename}, which cde-rag "
                "needs: is it a cde-small-v2 checkpoint (or its ModernBERT backbone)?"
            )
        return path

    def optional(self, filename: str) -> Path | None:
        return self._lookup(filename)

    def first_of(self, filenames: tuple[str, ...]) -> Path:
        """The first of `filenames` the repo has (the weights, in order of preference); one
        already in the cache first, so a cached snapshot loads without asking about the rest."""
        from huggingface_hub import try_to_load_from_cache

        for filename in filenames:
            cached = try_to_load_from_cache(
                self.repo_id, filename, cache_dir=self.cache_dir, revision=self.commit
            )
            if isinstance(cached, str):
                return Path(cached)
        for filename in filenames:
            path = self._lookup(filename)
            if path is not None:
                return path
        raise CheckpointError(
            f"{self.repo_id!r} at commit {self.commit} has no weights file "
            f"({' or '.join(filenames)})."
        )
