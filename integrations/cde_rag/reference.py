"""`PaddedReference`: cde-small-v2 computed the plain way, as its model card does.

The engine packs texts without padding and runs ModernBERT's layers itself (`modeling`); this is
the one reference it is checked against, in the tests and in `cde-rag bench` (as the baseline
it is compared with): fp32, one tokenizer call padding a list to its longest text, batches in
input order, and transformers' own `ModernBertModel.forward` with an attention mask. It runs on
the model's own modules (the same weights), and pools by masks built from the spec's rules
rather than from the engine's pooling code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .modeling import masked_mean

if TYPE_CHECKING:
    from .context import CorpusContext
    from .model import CDEModel
    from .modeling import FirstStage


class PaddedReference:
    """Rows `start:stop` of a padded, tokenised list: the first and the second stage."""

    def __init__(self, model: CDEModel):
        from transformers import AutoTokenizer

        if model.dtype != torch.float32:
            raise ValueError("The reference runs in float32: pass a float32 model.")
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(str(model.checkpoint.backbone_dir))
        colon = self.tokenizer.encode(": ", add_special_tokens=False)
        self.colon_id = colon[0] if colon else None

    def tokenize(self, texts: Sequence[str], prefix: str) -> Any:
        return self.tokenizer(
            [prefix + text for text in texts],
            padding=True,
            truncation=True,
            max_length=self.model.max_length,
            return_tensors="pt",
        )

    def dataset_embeddings(
        self, stage: FirstStage, encoded: Any, start: int, stop: int
    ) -> np.ndarray:
        """First-stage rows start:stop (`stage`: the model's first stage, loaded by the caller
        so that a benchmark can keep it resident as the card's model does)."""
        device = self.model.device
        ids = encoded["input_ids"][start:stop].to(device)
        mask = encoded["attention_mask"][start:stop].to(device)
        with torch.inference_mode():
            hidden = stage.embedder(input_ids=ids, attention_mask=mask).last_hidden_state
            return stage.mlp(masked_mean(hidden, mask)).cpu().numpy()

    def embed(self, encoded: Any, context: CorpusContext, start: int, stop: int) -> np.ndarray:
        """Second-stage embeddings of rows start:stop, L2-normalised."""
        stage = self.model.second_stage
        ids, mask = encoded["input_ids"][start:stop], encoded["attention_mask"][start:stop]
        pool = mask.clone()
        if self.model.config.pool_ignore_instruction_tokens and self.colon_id is not None:
            # The spec: pooling starts after the first colon past position 0 (the prefix words).
            for row in range(ids.shape[0]):
                colons = (ids[row, 1:] == self.colon_id).nonzero()
                if len(colons):
                    pool[row, : int(colons[0]) + 2] = 0
        device = self.model.device
        ids, mask, pool = ids.to(device), mask.to(device), pool.to(device)
        with torch.inference_mode():
            prefix = stage.prefix(torch.tensor(context.embeddings, device=device))
            batch, n_prefix = ids.shape[0], prefix.shape[0]
            tokens = stage.backbone.embeddings(input_ids=ids)
            inputs = torch.cat([prefix.unsqueeze(0).expand(batch, -1, -1), tokens], dim=1)
            ones = torch.ones(batch, n_prefix, dtype=mask.dtype, device=device)
            hidden = stage.backbone(
                inputs_embeds=inputs, attention_mask=torch.cat([ones, mask], dim=1)
            ).last_hidden_state
            if stage.pool_ignore_contextual_tokens:
                pooled = masked_mean(hidden[:, n_prefix:], pool)
            else:
                pooled = masked_mean(hidden, torch.cat([ones, pool], dim=1))
            out = stage.output_projection(pooled) + pooled
            return (out / out.norm(dim=-1, keepdim=True)).cpu().numpy()
