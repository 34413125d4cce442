"""Single-query latency against the second stage's forward alone: what a query costs beyond
the model itself (tokenising, checks, the context prefix, conversions)."""

from __future__ import annotations

import time


class ForwardTimer:
    """Times the second stage's forward on one text, tokenised and with the context's prefix
    rows projected beforehand: the least a query can cost with this model."""

    def __init__(self, model, context):
        import torch

        self.model = model
        rows = torch.tensor(context.embeddings, device=model.device)
        with torch.inference_mode():
            self.prefix = model.second_stage.prefix(rows)

    def __call__(self, text: str) -> float:
        import torch

        from .tokenization import QUERY_PREFIX

        model = self.model
        ids = model.encoder.encode([text], QUERY_PREFIX)[0]
        input_ids = torch.tensor(ids, device=model.device)
        starts = [model._pool_start(ids)]
        with torch.inference_mode():
            start = time.perf_counter()
            model.second_stage(input_ids, [len(ids)], self.prefix, starts).cpu()
            return time.perf_counter() - start
