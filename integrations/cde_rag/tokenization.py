"""Turn texts into `[CLS] prefix+text [SEP]` token ids, truncated, and into padded batches.

The raw `tokenizers` backend is used directly and never reconfigured after loading, so one
tokenizer can serve many threads at once (the transformers wrapper toggles truncation state
on every call, which is not thread-safe).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

DOCUMENT_PREFIX = "search_document: "
QUERY_PREFIX = "search_query: "
# Texts are cut to this many characters per token of budget before tokenizing, so a 10 MB
# string costs no more than a page; a cut that still yields too few tokens is widened.
_CHARS_PER_TOKEN = 8


class TextEncoder:
    """Tokenizes prefixed texts for one backbone, truncating to `max_length` tokens."""

    def __init__(self, backbone_dir: Path, max_length: int = 512):
        from transformers import AutoTokenizer

        try:
            wrapper = AutoTokenizer.from_pretrained(str(backbone_dir))
        except Exception as exc:
            raise CheckpointError(
                f"Could not load the backbone tokenizer from {backbone_dir}: {exc}"
            ) from exc
        backend = getattr(wrapper, "backend_tokenizer", None)
        if backend is None:
            raise CheckpointError(
                f"The tokenizer in {backbone_dir} has no fast (tokenizers) backend; "
                "cde-small-v2's backbone ships tokenizer.json."
            )
        self._backend = backend
        self._backend.no_truncation()
        self._backend.no_padding()
        # Batches are packed, never padded: only the two special tokens of each text matter.
        self.cls_id, self.sep_id = wrapper.cls_token_id, wrapper.sep_token_id
        if self.cls_id is None or self.sep_id is None:
            raise CheckpointError(f"The tokenizer in {backbone_dir} lacks [CLS] or [SEP].")
        self.max_length = max_length
        colon = self._backend.encode(": ", add_special_tokens=False).ids
        self.colon_id = colon[0] if colon else None

    def encode(self, texts: Sequence[str], prefix: str) -> list[list[int]]:
        """Token ids with special tokens, at most `max_length` long, for `prefix + text`."""
        budget = self.max_length - 2
        cut = budget * _CHARS_PER_TOKEN
        out: list[list[int] | None] = [None] * len(texts)
        pending = list(range(len(texts)))
        while pending:
            pieces = [prefix + texts[i][:cut] for i in pending]
            encoded = self._backend.encode_batch(pieces, add_special_tokens=False)
            retry = []
            for i, enc in zip(pending, encoded, strict=False):
                ids = enc.ids
                # A cut through a word can change that word's tokens only; keep a margin so the
                # first `budget` tokens are those of the whole text.
                if len(texts[i]) > cut and len(ids) <= budget + 16:
                    retry.append(i)
                else:
                    out[i] = [self.cls_id, *ids[:budget], self.sep_id]
            pending, cut = retry, cut * 4
        return out  # type: ignore[return-value]

    def count_tokens(self, texts: Sequence[str], prefix: str = "") -> list[int]:
        return [len(ids) for ids in self.encode(texts, prefix)]


@dataclass
class Batch:
    """Texts packed one after another, without padding, and where they go in the caller's order."""

    indices: list[int]
    input_ids: torch.Tensor  # (sum(lengths),)
    lengths: list[int]


def length_sorted_batches(token_ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[Batch]:
    """Batches of up to `batch_size` texts, longest first, packed without padding: no compute
    is spent on pad tokens, and similar lengths keep each batch's work even."""
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        ids = np.concatenate([np.asarray(token_ids[i], dtype=np.int64) for i in indices])
        yield Batch(indices, torch.from_numpy(ids), [len(token_ids[i]) for i in indices])
