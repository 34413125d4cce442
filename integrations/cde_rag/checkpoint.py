"""Find, validate and read a cde-small-v2 checkpoint, from the hub or a local folder.

Only what the engine needs is fetched: the contextual config, the weights, the optional
`random_strings.txt`, and the backbone's config and tokenizer (never the backbone's weights,
which the contextual checkpoint already contains twice).

From the hub, a revision is resolved to one commit per load, and every file of that repo is
read at that commit. An optional file counts as absent only when the hub says so (a 404, which
huggingface_hub records in its cache under `.no_exist`); when that cannot be known (offline, a
connection error), the load fails with the remedy instead of using something else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BACKBONE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
BACKBONE_REQUIRED = ("config.json", "tokenizer.json")
# Every file of the backbone folder the tokenizer reads; all of them change the token ids.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
RANDOM_STRINGS_FILE = "random_strings.txt"
# `owner/name`, as the hub spells repo ids (a folder given as `./owner/name` is never one).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ContextualConfig:
    """The keys of the contextual `config.json` that change what the model computes."""

    embedder: str
    corpus_size: int
    pool_ignore_contextual_tokens: bool = True
    pool_ignore_instruction_tokens: bool = False
    limit_layers: int | None = None
    limit_layers_first_stage: int | None = None
    # The reference tokenizes outside the model, always to 512 tokens, whatever the config says.
    max_seq_length: int = 512
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str) -> ContextualConfig:
        def fail(why: str) -> CheckpointError:
            return CheckpointError(f"{source}: {why}")

        if raw.get("autoregressive_backbone"):
            raise fail(
                "autoregressive_backbone=true is not supported: cde-rag runs the ModernBERT "
                "(bidirectional) cde-small-v2 family only. Use jxm/cde-small-v2 or a fine-tune."
            )
        tokens_per_doc = raw.get("transductive_tokens_per_document", 1)
        if tokens_per_doc != 1:
            raise fail(
                f"transductive_tokens_per_document={tokens_per_doc} is not supported (only 1 is, "
                "as in cde-small-v2)."
            )
        pooling = raw.get("pooling_strategy", "mean")
        if pooling != "mean":
            raise fail(f"pooling_strategy={pooling!r} is not supported (only 'mean' is).")
        if not raw.get("embedder"):
            raise fail("'embedder' is missing: it must name the backbone (hub id or folder).")
        corpus_size = raw.get("transductive_corpus_size")
        if not isinstance(corpus_size, int) or corpus_size < 1:
            raise fail(
                f"'transductive_corpus_size' must be a positive integer, got {corpus_size!r}."
            )
        for key in ("limit_layers", "limit_layers_first_stage"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise fail(f"{key!r} must be a positive integer or null, got {value!r}.")
        return cls(
            embedder=str(raw["embedder"]),
            corpus_size=corpus_size,
            pool_ignore_contextual_tokens=bool(raw.get("pool_ignore_contextual_tokens", True)),
            pool_ignore_instruction_tokens=bool(raw.get("pool_ignore_instruction_tokens", False)),
            limit_layers=raw.get("limit_layers"),
            limit_layers_first_stage=raw.get("limit_layers_first_stage"),
            raw=raw,
        )


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Local paths of everything the engine reads, wherever the checkpoint came from."""

    name: str
    revision: str | None
    config: ContextualConfig
    weights_path: Path
    backbone_dir: Path
    random_strings_path: Path | None
    backbone_revision: str | None = None
    # Why `random_strings.txt` could not be looked up, if it could not (offline, not cached).
    random_strings_unknown: str | None = None

    def weights_sha256(self) -> str:
        """Content hash of the weights (never their file name: a hub blob named by a hash can
        still hold other bytes), computed once per file and process."""
        return _content_sha256(self.weights_path)

    @cached_property
    def fingerprint(self) -> str:
        """Everything that changes the vectors, by content: the weights, the contextual config,
        the backbone config and the tokenizer files. `random_strings.txt` is left out on
        purpose: it only picks the fallback context's texts, which that context's own
        fingerprint covers, and fitted contexts do not depend on it."""
        digest = hashlib.sha256(b"cde-rag-model/2\n")
        digest.update(f"weights {self.weights_sha256()}\n".encode())
        digest.update(b"config " + _canonical_json(self.config.raw) + b"\n")
        backbone = json.loads((self.backbone_dir / "config.json").read_text(encoding="utf-8"))
        digest.update(b"backbone config " + _canonical_json(backbone) + b"\n")
        for filename in TOKENIZER_FILES:
            path = self.backbone_dir / filename
            content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"
            digest.update(f"{filename} {content}\n".encode())
        return digest.hexdigest()[:32]

    @cached_property
    def legacy_fingerprint(self) -> str:
        """The fingerprint cde-rag's context format 1 recorded (weights, configs and
        tokenizer.json only), so contexts and collections saved then still open."""
        digest = hashlib.sha256(b"cde-rag-model/1\n")
        digest.update(self.weights_sha256().encode())
        digest.update(json.dumps(self.config.raw, sort_keys=True).encode())
        for filename in ("config.json", "tokenizer.json"):
            path = self.backbone_dir / filename
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()[:32]


_CONTENT_HASHES: dict[tuple[str, int, int, int], str] = {}


def _content_sha256(path: Path) -> str:
    real = path.resolve()
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    found = _CONTENT_HASHES.get(key)
    if found is None:
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        found = _CONTENT_HASHES[key] = digest.hexdigest()
    return found


def _canonical_json(value: object) -> bytes:
    """JSON with sorted keys: reformatting a config file does not change what it means."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> ResolvedCheckpoint:
    """Locate a checkpoint's files, downloading from the hub only when given a hub id.

    An existing folder wins over a hub id of the same spelling (as in transformers), with a
    warning that names the folder: write `./owner/name` to mean the folder and silence it.
    """
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        if _HUB_ID.match(name):
            log.warning(
                "Loading %r from the folder %s, not from the hub repo of that name. Write "
                "./%s to mean the folder (no warning), or run from another directory to load "
                "the hub repo.",
                name,
                local.resolve(),
                name,
            )
        if revision is not None:
            log.warning("revision=%r is ignored: %s is a local folder.", revision, name)
        return _resolve_local(local, name, cache_dir=cache_dir, token=token)
    if local.exists():
        raise CheckpointError(f"{name} is a file; pass the checkpoint *folder* (with config.json).")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""):
        raise CheckpointError(
            f"Checkpoint folder {name!r} does not exist. Pass an existing folder with config.json "
            "and model.safetensors, or a hub id such as 'jxm/cde-small-v2'."
        )
    return _resolve_hub(name, revision=revision, cache_dir=cache_dir, token=token)


def _read_config(path: Path, source: str) -> ContextualConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{source} has no config.json; is it a cde-small-v2 checkpoint folder?"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{source}/config.json is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}/config.json must hold a JSON object.")
    return ContextualConfig.from_dict(raw, source)


def _resolve_local(
    folder: Path,
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
) -> ResolvedCheckpoint:
    log.info("Loading checkpoint %s from the folder %s.", name, folder.resolve())
    config = _read_config(folder / "config.json", name)
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"{name} has no weights: expected one of {', '.join(WEIGHT_FILES)} in that folder."
        )
    random_strings = folder / RANDOM_STRINGS_FILE
    backbone_dir, backbone_commit = _resolve_backbone(
        config.embedder, base=folder, cache_dir=cache_dir, token=token
    )
    return ResolvedCheckpoint(
        name=name,
        revision=None,
        config=config,
        weights_path=weights,
        backbone_dir=backbone_dir,
        random_strings_path=random_strings if random_strings.is_file() else None,
        backbone_revision=backbone_commit,
    )


def _resolve_hub(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
) -> ResolvedCheckpoint:
    repo = HubSnapshot(repo_id, revision, cache_dir=cache_dir, token=token)
    config_path = repo.require("config.json")
    config = _read_config(config_path, repo_id)
    weights = repo.first_of(WEIGHT_FILES)
    random_strings, unknown = None, None
    try:
        random_strings = repo.optional(RANDOM_STRINGS_FILE)
    except CheckpointError as exc:  # only the fallback context needs it: fail there, not here
        unknown = str(exc)
        log.info("%s", unknown)
    backbone_dir, backbone_commit = _resolve_backbone(
        config.embedder, base=config_path.parent, cache_dir=cache_dir, token=token
    )
    return ResolvedCheckpoint(
        name=repo_id,
        revision=repo.commit,
        config=config,
        weights_path=weights,
        backbone_dir=backbone_dir,
        random_strings_path=random_strings,
        backbone_revision=backbone_commit,
        random_strings_unknown=unknown,
    )


def _resolve_backbone(
    embedder: str,
    *,
    base: Path,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> tuple[Path, str | None]:
    """The backbone folder and its hub commit (None for a folder): a folder relative to the
    checkpoint, an absolute folder, or a hub id (never a folder relative to the current
    directory, which would silently shadow the hub id)."""
    path = Path(embedder).expanduser()
    for candidate in (base / embedder, path if path.is_absolute() else None):
        if candidate is not None and candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise CheckpointError(f"Backbone folder {candidate} has no config.json.")
            return candidate, None
    repo = HubSnapshot(embedder, None, cache_dir=cache_dir, token=token, backbone=True)
    config_path = repo.require("config.json")
    for filename in BACKBONE_FILES[1:]:
        if filename in BACKBONE_REQUIRED:
            repo.require(filename)
        else:
            repo.optional(filename)
    return config_path.parent, repo.commit


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
