"""Loading checkpoints from local folders, and their errors (the hub path: test_hub.py)."""

from __future__ import annotations

import pytest

from cde_rag import CDEModel, CheckpointError


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
