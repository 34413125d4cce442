"""Find, validate and read a cde-small-v2 checkpoint, from the hub or a local folder.

Only what the engine needs is fetched: the contextual config, the weights, the optional
`random_strings.txt`, and the backbone's config and tokenizer (never the backbone's weights,
which the contextual checkpoint already contains twice).

Hub ids are read through `hub.HubSnapshot`, pinned to one commit per load.
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
from .hub import BACKBONE_FILES, HubSnapshot

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
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
