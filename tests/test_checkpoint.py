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

BACKBONE_ID = "answerdotai/ModernBERT-base"
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
        "jxm/cde-small-v2",
        {
            "config.json": json.dumps(config),
            "model.safetensors": tiny / "model.safetensors",
            "random_strings.txt": "\n".join(f"hub random {i}" for i in range(64)),
        },
    )
    _cache_repo(cache, BACKBONE_ID, {p.name: p for p in (tiny / "backbone").iterdir()})
    return cache


def _run_offline(cache: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_hub_id_loads_offline_from_the_cache(hub_cache, tiny_context, golden):
    code = (
        "import json, sys; from cde_rag import CDEModel\n"
        "m = CDEModel.from_pretrained('jxm/cde-small-v2', device='cpu')\n"
        "mini = json.load(open(sys.argv[0] if False else %r))['minicorpus']\n"
        "ctx = m.context(mini)\n"
        "print(json.dumps({'fp': ctx.fingerprint, 'model_fp': m.fingerprint, "
        "'fallback': m.fallback_context().minicorpus[0], 'q': m.embed_queries(['?'], context=ctx)[0].tolist()}))"
    ) % str(Path(__file__).parent / "fixtures" / "tiny-cde-v2" / "expected.json")
    result = _run_offline(hub_cache, code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # Same weights as the local fixture, so the same model and context fingerprints.
    assert out["model_fp"] != ""
    assert out["fallback"].startswith("hub random")  # random_strings.txt came from the cache
    assert max(abs(a - b) for a, b in zip(out["q"], golden["query_embeddings"][-1])) < 1e-4


def test_hub_id_missing_from_cache_fails_fast_with_the_remedy(tmp_path):
    result = _run_offline(
        tmp_path,
        "from cde_rag import CDEModel; CDEModel.from_pretrained('jxm/not-cached-model')",
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
