"""The engine's contract with transformers (issue 16 item 7): `run_backbone` re-implements
ModernBERT's layer loop from its internals, so each internal it reads is checked when a model
loads, and a transformers that changed one is refused with the supported range named."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import ModernBertConfig, ModernBertModel
from transformers.models.modernbert import modeling_modernbert

from cde_rag import CDEModel
from cde_rag.errors import CheckpointError, UnsupportedTransformersError
from cde_rag.modeling import SUPPORTED_TRANSFORMERS, backbone_config, check_backbone_contract


@pytest.fixture
def backbone(tiny_path) -> ModernBertModel:
    config = backbone_config(ModernBertConfig.from_pretrained(f"{tiny_path}/backbone"), None)
    with torch.device("meta"):
        return ModernBertModel(config)


def test_the_installed_transformers_is_in_the_supported_range(backbone):
    from packaging.specifiers import SpecifierSet

    assert transformers.__version__ in SpecifierSet(SUPPORTED_TRANSFORMERS)
    check_backbone_contract(backbone)  # nothing to report


def _drop(obj, name):
    delattr(obj, name)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda b: _drop(b.layers[1].attn, "Wqkv"), "layers[1] has no Wqkv"),
        (lambda b: _drop(b.layers[2].mlp, "Wi"), "layers[2] has no Wi"),
        (lambda b: setattr(b.layers[0], "attention_type", "global"), "attention_type"),
        (lambda b: setattr(b.layers[1].attn, "sliding_window", 8), "sliding_window is 8"),
        (lambda b: setattr(b.layers[0].attn, "sliding_window", 9), "sliding_window is 9"),
        (lambda b: _drop(b.rotary_emb, "sliding_attention_inv_freq"), "rotary_emb"),
        (lambda b: setattr(b.config, "layer_types", None), "config.layer_types"),
        (lambda b: _drop(b, "final_norm"), "final_norm"),
        (lambda b: _drop(b.embeddings, "tok_embeddings"), "tok_embeddings"),
    ],
    ids=[
        "Wqkv",
        "Wi",
        "attention_type",
        "half-window-convention",
        "window-on-global-layer",
        "rotary-inv-freq",
        "layer-types",
        "final-norm",
        "tok-embeddings",
    ],
)
def test_a_changed_internal_names_itself_and_the_supported_range(backbone, change, named):
    change(backbone)
    with pytest.raises(UnsupportedTransformersError) as caught:
        check_backbone_contract(backbone)
    message = str(caught.value)
    assert named in message
    assert transformers.__version__ in message and SUPPORTED_TRANSFORMERS in message
    assert isinstance(caught.value, CheckpointError)  # handled wherever load errors are


def test_the_check_runs_when_the_model_loads(tiny_path, monkeypatch):
    """A transformers whose attention counted its window without the +1 (as a future release
    might) is refused by from_pretrained, not discovered as wrong vectors later."""
    original = modeling_modernbert.ModernBertAttention.__init__

    def init(self, config, layer_idx):
        original(self, config, layer_idx)
        if self.sliding_window is not None:
            self.sliding_window -= 1

    monkeypatch.setattr(modeling_modernbert.ModernBertAttention, "__init__", init)
    with pytest.raises(UnsupportedTransformersError, match="sliding_window"):
        CDEModel.from_pretrained(tiny_path, device="cpu")
