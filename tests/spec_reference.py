"""A deliberately naive, one-text-at-a-time implementation of cde-spec.md, for tests only.

It shares no code with the engine (transformers' own tokenizer wrapper, freshly built
ModernBertModel instances, no batching), so agreement between the two is evidence that the
engine's batching, masking and pooling follow the spec on configs the golden data lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel


class SpecReference:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        backbone = folder / self.config["embedder"]
        self.tokenizer = AutoTokenizer.from_pretrained(str(backbone))
        self.weights = load_file(folder / "model.safetensors")
        self.n = self.config["transductive_corpus_size"]
        self.first = self._backbone(
            backbone, "first_stage_model.embedder.", "limit_layers_first_stage"
        )
        self.second = self._backbone(backbone, "second_stage_model.backbone.", "limit_layers")

    def _backbone(self, folder: Path, prefix: str, limit_key: str) -> ModernBertModel:
        config = ModernBertConfig.from_pretrained(str(folder))
        limit = self.config.get(limit_key)
        if limit:
            config.num_hidden_layers = limit
            config.layer_types = config.layer_types[:limit]
        config._attn_implementation = "eager"
        model = ModernBertModel(config)
        state = {k[len(prefix) :]: v for k, v in self.weights.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not _dropped_layer(k, config.num_hidden_layers)}
        model.load_state_dict(state, strict=True)
        return model.eval()

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weights[name + ".weight"], self.weights[name + ".bias"])

    def _ids(self, text: str) -> torch.Tensor:
        enc = self.tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
        return enc["input_ids"]

    @torch.no_grad()
    def dataset_embeddings(self, minicorpus: list[str]) -> np.ndarray:
        rows = []
        for text in minicorpus:
            ids = self._ids("search_document: " + text)
            hidden = self.first(input_ids=ids).last_hidden_state[0]
            pooled = hidden.mean(dim=0)
            h = F.gelu(self._linear("first_stage_model.mlp.0", pooled))
            rows.append(self._linear("first_stage_model.mlp.2", h))
        return torch.stack(rows).numpy()

    @torch.no_grad()
    def embed(self, texts: list[str], dataset_embeddings: np.ndarray, prefix: str) -> np.ndarray:
        d = self.second.config.hidden_size
        soft = self._linear(
            "second_stage_model.prompt_projection.2",
            F.relu(self._linear("second_stage_model.prompt_projection.0", torch.ones(d))),
        ).reshape(-1, d)
        ctx = torch.cat([torch.tensor(dataset_embeddings), soft])
        colon = self.tokenizer.encode(": ", add_special_tokens=False)[0]
        out = []
        for text in texts:
            ids = self._ids(prefix + text)
            tokens = self.second.embeddings(input_ids=ids)[0]
            hidden = self.second(inputs_embeds=torch.cat([ctx, tokens])[None]).last_hidden_state[0]
            # The two pooling flags are independent: one drops the context rows, the other the
            # document's own tokens up to the first colon after position 0.
            context_rows, doc_rows = hidden[: len(ctx)], hidden[len(ctx) :]
            if self.config.get("pool_ignore_instruction_tokens", False):
                hits = [i for i, t in enumerate(ids[0].tolist()) if i > 0 and t == colon]
                if hits:
                    doc_rows = doc_rows[hits[0] + 1 :]
            if self.config.get("pool_ignore_contextual_tokens", True):
                hidden = doc_rows
            else:
                hidden = torch.cat([context_rows, doc_rows])
            p = hidden.mean(dim=0)
            o = (
                self._linear(
                    "second_stage_model.output_projection.2",
                    F.relu(self._linear("second_stage_model.output_projection.0", p)),
                )
                + p
            )
            out.append(o / o.norm())
        return torch.stack(out).numpy()


def _dropped_layer(key: str, kept: int) -> bool:
    parts = key.split(".")
    return len(parts) > 1 and parts[0] == "layers" and int(parts[1]) >= kept
