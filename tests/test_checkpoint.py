"""Loading checkpoints: local folders, the hub path (offline, from a pre-filled cache), errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cde_rag import CDEModel, CheckpointError

HUB_ID = "jxm/cde-small-v2"
BACKBONE_ID = "answerdotai/ModernBERT-base"  # the real backbone id, served from the cache
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path | str]) -> None:
    """Lay out files the way huggingface_hub's cache stores a snapshot of `main`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        target = snapshot / name
        if isinstance(source, Path):
            shutil.copy(source, target)
        else:
            target.write_text(source)


@pytest.fixture
def hub_cache(tmp_path, tiny_path) -> Path:
    tiny = Path(tiny_path)
    cache = tmp_path / "hub"
    config = json.loads((tiny / "config.json").read_text())
    config["embedder"] = BACKBONE_ID
    _cache_repo(
        cache,
        HUB_ID,
        {
            "config.json": json.dumps(config),
            "model.safetensors": tiny / "model.safetensors",
            "random_strings.txt": "\n".join(f"hub random {i}" for i in range(64)),
        },
    )
    _cache_repo(cache, BACKBONE_ID, {p.name: p for p in (tiny / "backbone").iterdir()})
    return cache


# Runs in a fresh interpreter, so HF_HUB_OFFLINE and HF_HUB_CACHE apply from the start.
LOAD_FROM_HUB = """
import json, sys
import numpy as np
from cde_rag import CDEModel
golden = json.load(open(sys.argv[2]))
m = CDEModel.from_pretrained(sys.argv[1], device="cpu")
ctx = m.context(golden["minicorpus"])
print(json.dumps({
    "name": m.name,
    "context_error": float(np.abs(ctx.embeddings - np.array(golden["dataset_embeddings"])).max()),
    "query_error": float(np.abs(
        m.embed_queries(golden["queries"], context=ctx) - np.array(golden["query_embeddings"])
    ).max()),
    "fallback": m.fallback_context().minicorpus[0],
}))
"""


def test_hub_id_loads_offline_from_the_cache(hub_cache, tiny_path):
    expected = str(Path(tiny_path) / "expected.json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_HUB, HUB_ID, expected],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["name"] == HUB_ID
    # The cached snapshot holds the golden weights and the backbone came from its own repo id.
    assert out["context_error"] < 1e-4 and out["query_error"] < 1e-4
    assert out["fallback"].startswith("hub random")  # random_strings.txt came from the cache


def test_hub_id_missing_from_cache_fails_fast_with_the_remedy(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    code = "import sys; from cde_rag import CDEModel; CDEModel.from_pretrained(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", code, "jxm/not-cached-model"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "CheckpointError" in result.stderr and "local checkpoint folder" in result.stderr


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        CDEModel.from_pretrained(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        CDEModel.from_pretrained(empty)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"autoregressive_backbone": True}, "autoregressive_backbone"),
        ({"transductive_tokens_per_document": 4}, "transductive_tokens_per_document"),
        ({"transductive_corpus_size": None}, "transductive_corpus_size"),
        ({"embedder": "missing-backbone-folder/x/y"}, "neither an existing folder"),
    ],
)
def test_unsupported_configs_are_refused(make_checkpoint, overrides, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=message):
        CDEModel.from_pretrained(make_checkpoint(config=overrides))


def test_missing_weights_file(make_checkpoint):
    folder = make_checkpoint()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        CDEModel.from_pretrained(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda w: {k: v for k, v in w.items() if "first_stage_model.mlp.2.bias" not in k},
            "missing",
        ),
        (
            lambda w: {
                k: v for k, v in w.items() if "second_stage_model.backbone.final_norm" not in k
            },
            "missing",
        ),
        (
            lambda w: {
                **w,
                "second_stage_model.extra.weight": w["first_stage_model.mlp.0.bias"].clone(),
            },
            "unexpected",
        ),
        (
            lambda w: {**w, "third_stage.weight": w["first_stage_model.mlp.0.bias"].clone()},
            "Unexpected",
        ),
    ],
    ids=["missing-first", "missing-second", "unexpected-second", "stray-prefix"],
)
def test_weight_key_errors(make_checkpoint, edit, message):
    with pytest.raises(CheckpointError, match=message):
        CDEModel.from_pretrained(make_checkpoint(edit_weights=edit))


def test_backbone_config_that_does_not_match_the_weights(make_checkpoint):
    with pytest.raises(CheckpointError, match="shape|missing"):
        CDEModel.from_pretrained(make_checkpoint(backbone_config={"intermediate_size": 80}))
