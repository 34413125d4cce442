"""Shared fixtures: the tiny golden checkpoint, a model loaded once, and checkpoint variants."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-cde-v2"


@pytest.fixture(scope="session")
def tiny_path() -> str:
    return str(TINY)


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    return json.loads((TINY / "expected.json").read_text())


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from cde_rag import CDEModel

    return CDEModel.from_pretrained(tiny_path, device="cpu")


@pytest.fixture(scope="session")
def tiny_context(tiny_model, golden):
    return tiny_model.context(golden["minicorpus"])


@pytest.fixture
def make_checkpoint(tmp_path) -> Callable[..., Path]:
    """Copy the tiny checkpoint and edit its config (and optionally its weights)."""

    def make(
        name: str = "variant",
        config: dict[str, Any] | None = None,
        edit_weights: Callable[[dict], dict] | None = None,
        backbone_config: dict[str, Any] | None = None,
    ) -> Path:
        target = tmp_path / name
        shutil.copytree(TINY, target, ignore=shutil.ignore_patterns("expected.json"))
        if config:
            raw = json.loads((target / "config.json").read_text())
            raw.update(config)
            (target / "config.json").write_text(json.dumps(raw))
        if backbone_config:
            path = target / "backbone" / "config.json"
            raw = json.loads(path.read_text())
            raw.update(backbone_config)
            path.write_text(json.dumps(raw))
        if edit_weights:
            from safetensors.torch import load_file, save_file

            weights = edit_weights(load_file(target / "model.safetensors"))
            save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
        return target

    return make
