"""The two stages of cde-small-v2 as plain torch modules on `transformers.ModernBertModel`.

The maths follows `cde-spec.md`; tokenization, batching and contexts live elsewhere, so these
modules only map padded token ids to vectors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from itertools import pairwise

import torch
from torch import nn
from transformers import ModernBertConfig, ModernBertModel
from transformers.models.modernbert.modeling_modernbert import ModernBertRotaryEmbedding

from .errors import CheckpointError

FIRST_STAGE = "first_stage_model."
SECOND_STAGE = "second_stage_model."


def backbone_config(base: ModernBertConfig, limit_layers: int | None) -> ModernBertConfig:
    """The backbone config for one stage, cut to its first `limit_layers` layers when set."""
    config = copy.deepcopy(base)
    if limit_layers is not None and limit_layers < config.num_hidden_layers:
        config.layer_types = list(config.layer_types[:limit_layers])
        config.num_hidden_layers = limit_layers
    config._attn_implementation = "sdpa"
    return config


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is 1, as the reference computes it."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / (mask.sum(dim=1) + 1e-20)


def _mlp(weights: Mapping[str, torch.Tensor], prefix: str, activation: nn.Module) -> nn.Sequential:
    try:
        first, second = weights[f"{prefix}0.weight"], weights[f"{prefix}2.weight"]
    except KeyError as exc:
        raise CheckpointError(
            f"Weights lack {exc.args[0]}: not a cde-small-v2 checkpoint?"
        ) from None
    return nn.Sequential(
        nn.Linear(first.shape[1], first.shape[0], device="meta"),
        activation,
        nn.Linear(second.shape[1], second.shape[0], device="meta"),
    )


class FirstStage(nn.Module):
    """Embeds minicorpus documents into dataset embeddings."""

    def __init__(self, config: ModernBertConfig, weights: Mapping[str, torch.Tensor]):
        super().__init__()
        with torch.device("meta"):
            self.embedder = ModernBertModel(config)
        self.mlp = _mlp(weights, f"{FIRST_STAGE}mlp.", nn.GELU())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embedder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.mlp(masked_mean(hidden, attention_mask))


class SecondStage(nn.Module):
    """Embeds queries and documents while attending to a context prefix."""

    def __init__(
        self,
        config: ModernBertConfig,
        weights: Mapping[str, torch.Tensor],
        *,
        pool_ignore_contextual_tokens: bool,
    ):
        super().__init__()
        with torch.device("meta"):
            self.backbone = ModernBertModel(config)
        self.prompt_projection = _mlp(weights, f"{SECOND_STAGE}prompt_projection.", nn.ReLU())
        self.output_projection = _mlp(weights, f"{SECOND_STAGE}output_projection.", nn.ReLU())
        self.pool_ignore_contextual_tokens = pool_ignore_contextual_tokens
        hidden = config.hidden_size
        soft_out = self.prompt_projection[2].out_features
        if soft_out % hidden:
            raise CheckpointError(
                f"prompt_projection outputs {soft_out} values, not a multiple of the hidden size "
                f"{hidden}: the checkpoint does not match its backbone config."
            )
        self.num_soft_prompts = soft_out // hidden

    def prefix(self, dataset_embeddings: torch.Tensor) -> torch.Tensor:
        """The rows every document attends to: the dataset embeddings, then the soft prompt."""
        hidden = self.backbone.config.hidden_size
        ones = torch.ones(hidden, device=dataset_embeddings.device, dtype=dataset_embeddings.dtype)
        soft = self.prompt_projection(ones).reshape(self.num_soft_prompts, hidden)
        return torch.cat([dataset_embeddings, soft], dim=0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor,
        pool_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Normalised embeddings; `pool_mask` marks the document positions that are pooled."""
        batch = input_ids.shape[0]
        n_prefix = prefix.shape[0]
        tokens = self.backbone.embeddings(input_ids=input_ids)
        inputs = torch.cat([prefix.unsqueeze(0).expand(batch, -1, -1), tokens], dim=1)
        prefix_mask = torch.ones(
            batch, n_prefix, dtype=attention_mask.dtype, device=attention_mask.device
        )
        hidden = self.backbone(
            inputs_embeds=inputs, attention_mask=torch.cat([prefix_mask, attention_mask], dim=1)
        ).last_hidden_state
        if self.pool_ignore_contextual_tokens:
            pooled = masked_mean(hidden[:, n_prefix:], pool_mask)
        else:
            pooled = masked_mean(hidden, torch.cat([prefix_mask, pool_mask], dim=1))
        out = self.output_projection(pooled) + pooled
        return out / out.norm(dim=-1, keepdim=True)


def check_keys(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    prefix: str,
    limit_layers: int | None = None,
) -> dict[str, torch.Tensor]:
    """The stage's own tensors, refusing any missing or unexpected key or a wrong shape."""
    own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if limit_layers is not None:
        # Layers past `limit_layers` are unused by design, whether or not the checkpoint kept them.
        own = {k: v for k, v in own.items() if not _beyond(k, limit_layers)}
    shapes = {name: tensor.shape for name, tensor in module.state_dict().items()}
    missing, unexpected = sorted(shapes.keys() - own.keys()), sorted(own.keys() - shapes.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"Weights do not match the model built from the configs ({prefix.rstrip('.')}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Check that the backbone config (embedder) and limit_layers match the weights."
        )
    for name, tensor in own.items():
        if tensor.shape != shapes[name]:
            raise CheckpointError(
                f"Weight {prefix}{name} has shape {tuple(tensor.shape)}, but the config implies "
                f"{tuple(shapes[name])}: the backbone config does not match the weights."
            )
    return own


def _beyond(key: str, kept: int) -> bool:
    parts = key.split(".")
    return any(
        name == "layers" and index.isdigit() and int(index) >= kept
        for name, index in pairwise(parts)
    )


def load_stage(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    prefix: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    limit_layers: int | None = None,
) -> nn.Module:
    """Move a meta-built stage onto real weights (checked by `check_keys`)."""
    own = check_keys(module, weights, prefix, limit_layers)
    module.load_state_dict(own, assign=True)
    backbones = [sub for sub in module.modules() if isinstance(sub, ModernBertModel)]
    for sub in backbones:  # off the meta device before moving
        sub.rotary_emb = ModernBertRotaryEmbedding(config=sub.config)
    module = module.to(device=device, dtype=dtype)
    # Rotary frequencies are non-persistent buffers: rebuild them in float32 on the device, so a
    # bfloat16 model keeps exact positions.
    for sub in backbones:
        sub.rotary_emb = ModernBertRotaryEmbedding(config=sub.config, device=device)
    return module.eval().requires_grad_(False)
