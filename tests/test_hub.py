"""The hub path (issue 13 part 2), tested without the network: hub caches are laid out by hand,
and loads run in fresh interpreters under HF_HUB_OFFLINE=1, or with HF_ENDPOINT on a closed
127.0.0.1 port to play a connection failure. Nothing here can reach the internet."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HUB_ID = "jxm/cde-small-v2"
BACKBONE_ID = "answerdotai/ModernBERT-base"  # the real backbone id, served from the cache
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLDER = "89abcdef0123456789abcdef0123456789abcdef"
BACKBONE_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
CLI = str(Path(sys.executable).with_name("cde-rag"))


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cache_snapshot(
    cache: Path,
    repo_id: str,
    commit: str,
    files: dict[str, Path | str],
    *,
    missing: tuple[str, ...] = (),
    ref: str | None = "main",
) -> None:
    """Lay out one commit of a repo as huggingface_hub's cache stores it, including the
    `.no_exist` records it keeps for files the hub answered 404 for."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    for name, source in files.items():
        target = snapshot / name
        if isinstance(source, Path):
            shutil.copy(source, target)
        else:
            target.write_text(source)
    for name in missing:
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def checkpoint_files(tiny: Path, **extra: str) -> dict[str, Path | str]:
    config = json.loads((tiny / "config.json").read_text())
    config["embedder"] = BACKBONE_ID
    return {"config.json": json.dumps(config), "model.safetensors": tiny / "model.safetensors"} | {
        name.replace("_txt", ".txt"): text for name, text in extra.items()
    }


def cache_backbone(cache: Path, tiny: Path, **kwargs) -> None:
    files = {p.name: p for p in (tiny / "backbone").iterdir()}
    kwargs.setdefault("missing", ("special_tokens_map.json",))
    cache_snapshot(cache, BACKBONE_ID, BACKBONE_COMMIT, files, **kwargs)


@pytest.fixture
def hub_cache(tmp_path, tiny_path) -> Path:
    tiny = Path(tiny_path)
    cache = tmp_path / "hub"
    strings = "\n".join(f"hub random {i}" for i in range(64))
    cache_snapshot(cache, HUB_ID, COMMIT, checkpoint_files(tiny, random_strings_txt=strings))
    cache_backbone(cache, tiny)
    return cache


# Runs in a fresh interpreter, so the HF_* variables apply from the start.
LOAD = """
import json, sys, time
from cde_rag import CDEModel, CDEError
revision = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
started = time.monotonic()
try:
    m = CDEModel.from_pretrained(sys.argv[1], revision=revision, device="cpu")
except CDEError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                      "seconds": time.monotonic() - started}))
    raise SystemExit(0)
out = {"name": m.name, "revision": m.revision, "backbone_revision": m.backbone_revision,
       "provenance": m.provenance, "seconds": time.monotonic() - started}
try:
    ctx = m.fallback_context()
    out["fallback"] = ctx.minicorpus[0]
    out["context"] = ctx.describe()
except CDEError as exc:
    out["fallback_error"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def hub_env(cache: Path, *, offline: bool) -> dict[str, str]:
    """Never the real hub: offline mode, or an endpoint where nothing listens."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(cache.parent / "hf-home"),  # no saved token
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def load(
    name: str,
    cache: Path,
    *,
    offline: bool = True,
    revision: str = "",
    cwd: Path | None = None,
) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", LOAD, name, revision],
        env=hub_env(cache, offline=offline),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_hub_id_loads_offline_at_one_commit_and_records_it(hub_cache):
    out, _ = load(HUB_ID, hub_cache)
    assert out["name"] == HUB_ID
    assert out["revision"] == COMMIT and out["backbone_revision"] == BACKBONE_COMMIT
    assert out["provenance"]["revision"] == COMMIT
    assert out["provenance"]["backbone"] == BACKBONE_ID
    assert out["fallback"].startswith("hub random")  # random_strings.txt came from the cache
    assert out["context"]["model_revision"] == COMMIT
    assert out["context"]["backbone_revision"] == BACKBONE_COMMIT


def test_a_local_folder_has_no_revision(tiny_model):
    assert tiny_model.revision is None and tiny_model.backbone_revision is None
    assert tiny_model.provenance["revision"] is None


@pytest.mark.slow
def test_every_file_comes_from_the_resolved_commit(hub_cache, tiny_path):
    """An older commit in the cache has other random strings; `main` must not borrow them,
    and asking for the older commit (or a tag naming it) must use its files only."""
    tiny = Path(tiny_path)
    older = checkpoint_files(tiny, random_strings_txt="older string\n" * 40)
    cache_snapshot(hub_cache, HUB_ID, OLDER, older, ref="v1")
    main, _ = load(HUB_ID, hub_cache)
    assert main["revision"] == COMMIT and main["fallback"].startswith("hub random")
    for revision in (OLDER, "v1"):
        pinned, _ = load(HUB_ID, hub_cache, revision=revision)
        assert pinned["revision"] == OLDER and pinned["fallback"] == "older string"
    unknown, _ = load(HUB_ID, hub_cache, revision="v2")
    assert (
        unknown["error"] == "CheckpointError" and "not in the local hub cache" in unknown["message"]
    )


def test_a_file_known_to_be_missing_is_absent(tmp_path, tiny_path):
    """The hub answered 404 for random_strings.txt (recorded under .no_exist): the checkpoint
    has none, so the documented generated strings are used."""
    cache = tmp_path / "hub"
    cache_snapshot(
        cache, HUB_ID, COMMIT, checkpoint_files(Path(tiny_path)), missing=("random_strings.txt",)
    )
    cache_backbone(cache, Path(tiny_path))
    out, _ = load(HUB_ID, cache)
    assert "fallback" in out and not out["fallback"].startswith("hub random")


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "connection-refused"])
def test_an_unknown_optional_file_is_never_replaced(tmp_path, tiny_path, offline):
    """random_strings.txt is neither cached nor known missing, and the hub cannot be asked:
    the model loads (fitted contexts do not need it), but the fallback context is an error
    instead of one made of other strings."""
    cache = tmp_path / "hub"
    cache_snapshot(cache, HUB_ID, COMMIT, checkpoint_files(Path(tiny_path)))
    cache_backbone(cache, Path(tiny_path))
    out, stderr = load(HUB_ID, cache, offline=offline)
    assert out["revision"] == COMMIT and "fallback" not in out
    assert out["fallback_error"].startswith("CheckpointError: Cannot tell whether random_strings")
    assert "hf download jxm/cde-small-v2 --revision " + COMMIT in out["fallback_error"]
    if not offline:  # the cached commit was used because the hub was unreachable: say so
        assert "could not be reached" in stderr and COMMIT in stderr


def test_an_unknown_backbone_tokenizer_file_fails_the_load(tmp_path, tiny_path):
    """tokenizer_config.json changes the vectors: not knowing it is an error, not a default."""
    cache = tmp_path / "hub"
    cache_snapshot(cache, HUB_ID, COMMIT, checkpoint_files(Path(tiny_path), random_strings_txt="x"))
    files = {p.name: p for p in (Path(tiny_path) / "backbone").iterdir()}
    del files["tokenizer_config.json"]
    cache_snapshot(cache, BACKBONE_ID, BACKBONE_COMMIT, files, missing=("special_tokens_map.json",))
    out, _ = load(HUB_ID, cache)
    assert out["error"] == "CheckpointError"
    assert out["message"].startswith("Cannot tell whether tokenizer_config.json of")
    assert f"hf download {BACKBONE_ID} config.json tokenizer.json" in out["message"]


def test_tokenizer_json_is_required(tmp_path, tiny_path):
    cache = tmp_path / "hub"
    cache_snapshot(cache, HUB_ID, COMMIT, checkpoint_files(Path(tiny_path), random_strings_txt="x"))
    files = {p.name: p for p in (Path(tiny_path) / "backbone").iterdir()}
    del files["tokenizer.json"]
    cache_backbone_missing = ("special_tokens_map.json", "tokenizer.json")
    cache_snapshot(cache, BACKBONE_ID, BACKBONE_COMMIT, files, missing=cache_backbone_missing)
    out, _ = load(HUB_ID, cache)
    assert out["error"] == "CheckpointError"
    assert "has no tokenizer.json, which cde-rag needs" in out["message"]


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "connection-refused"])
def test_no_network_and_no_cache_fails_fast_in_one_line(tmp_path, offline):
    out, _ = load(HUB_ID, tmp_path / "empty-cache", offline=offline)
    assert out["error"] == "CheckpointError"
    assert out["seconds"] < 3, out  # one attempt, no retries with backoff
    assert "\n" not in out["message"]
    assert "not in the local hub cache" in out["message"]
    assert "`hf download jxm/cde-small-v2`" in out["message"]
    assert "huggingface-cli" not in out["message"]  # not a command of huggingface_hub 1.x+
    reason = "offline mode" if offline else "could not be reached"
    assert reason in out["message"]


def test_the_cli_fails_with_one_line_when_the_hub_is_unreachable(tmp_path):
    command = [CLI, "serve", "--port", str(free_port()), "--data", str(tmp_path / "data")]
    env = hub_env(tmp_path / "empty-cache", offline=False)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cde-rag serve: error: Cannot load 'jxm/cde-small-v2'")
    assert "could not be reached" in line and "hf download" in line


def test_a_folder_named_like_a_hub_id_wins_but_says_so(tmp_path, tiny_path, hub_cache):
    """transformers' rule (an existing folder wins), with a warning that names the folder."""
    shutil.copytree(tiny_path, tmp_path / "jxm" / "cde-small-v2")
    out, stderr = load(HUB_ID, hub_cache, cwd=tmp_path)
    assert out["revision"] is None  # the folder, not the hub snapshot
    assert "from the folder" in stderr and str(tmp_path / "jxm" / "cde-small-v2") in stderr
    assert "./jxm/cde-small-v2" in stderr
    quiet, stderr = load("./jxm/cde-small-v2", hub_cache, cwd=tmp_path)
    assert quiet["revision"] is None and "from the folder" not in stderr
