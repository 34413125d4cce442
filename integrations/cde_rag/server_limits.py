"""How much one request to `cde-rag serve` may ask for (no web framework needed to read them:
the CLI shows them in `--help`)."""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI's own limits for one embeddings request; clients already split their work to fit.
MAX_INPUTS = 2048
MAX_TOKENS = 300_000
# A body of many tiny strings takes ~14x its size in memory once parsed: 16 MiB keeps that
# near 0.2 GB, and still fits 2048 texts of 512 tokens each several times over.
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """`cde-rag serve --max-inputs/--max-tokens/--max-body-mb`: over any of them, a request is
    refused (400 or 413) before it reaches the model."""

    max_inputs: int = MAX_INPUTS
    max_tokens: int = MAX_TOKENS
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
