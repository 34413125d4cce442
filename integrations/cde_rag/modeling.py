"""The two stages of cde-small-v2 as plain torch modules on `transformers.ModernBertModel`.

The maths follows `cde-spec.md`; tokenization, batching and contexts live elsewhere, so these
modules only map padded token ids to vectors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from itertools import pairwise

import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import ModernBertConfig, ModernBertModel

from .errors import CheckpointError, UnsupportedTransformersError

try:
    from transformers.models.modernbert.modeling_modernbert import ModernBertRotaryEmbedding
except ImportError:  # reported, with the supported range, when a model loads
    ModernBertRotaryEmbedding = None  # type: ignore[assignment,misc]

FIRST_STAGE = "first_stage_model."
SECOND_STAGE = "second_stage_model."
# The transformers releases whose ModernBERT internals `run_backbone` was tested against; keep
# in step with pyproject.toml. `check_backbone_contract` checks the internals themselves.
SUPPORTED_TRANSFORMERS = ">=5.0,<5.25"
_LAYER_TYPES = {"full_attention", "sliding_attention"}


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


# -- the backbone on packed (unpadded) sequences -------------------------------------------------


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` in the module's weight dtype (bfloat16 in fast mode), result in float32."""
    return F.linear(x.to(module.weight.dtype), module.weight, module.bias).float()


def _rotary(backbone: ModernBertModel, positions: torch.Tensor) -> dict[str, tuple]:
    """Per layer type, float32 (cos, sin) halves for `positions`: positions stay exact."""
    tables = {}
    rotary = backbone.rotary_emb
    for layer_type in set(backbone.config.layer_types):
        inv_freq = getattr(rotary, f"{layer_type}_inv_freq").float()
        scale = getattr(rotary, f"{layer_type}_attention_scaling")
        angles = positions[:, None].float() * inv_freq[None, :]
        tables[layer_type] = (angles.cos() * scale, angles.sin() * scale)
    return tables


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (rows, ..., head_dim) in float32, `cos`/`sin` of shape (rows, half)."""
    half = x.shape[-1] // 2
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (half,)
    cos, sin = cos.view(shape), sin.view(shape)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _local_mask(q_start: int, n_queries: int, n_keys: int, window: int, device) -> torch.Tensor:
    """Block-local mask: query block b (queries q_start+b*w ...) sees keys q_start+b*w-w ... +2w,
    allowed where |query - key| <= window and the key exists."""
    blocks = -(-n_queries // window)
    i = torch.arange(window, device=device)
    j = torch.arange(3 * window, device=device)
    band = ((j[None, :] - i[:, None]) >= 0) & ((j[None, :] - i[:, None]) <= 2 * window)
    key_pos = q_start + torch.arange(blocks, device=device)[:, None] * window - window + j[None, :]
    valid = (key_pos >= 0) & (key_pos < n_keys)
    allowed = band[None, :, :] & valid[:, None, :]
    # Additive float mask: with it (not a bool one) SDPA on CPU takes its fused kernel.
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, window: int | None, masks: dict
) -> torch.Tensor:
    """Attention of queries at positions q_start.. over all keys of one sequence.

    q: (heads, n_queries, head_dim), k/v: (heads, n_keys, head_dim). A sliding-window layer
    (`window` = how far each side a query sees) computes only the blocks its window touches,
    instead of the full square with a mask.
    """
    n_queries, n_keys = q.shape[1], k.shape[1]
    if window is None or n_keys <= 3 * window:
        mask = None
        if window is not None:
            qpos = torch.arange(q_start, q_start + n_queries, device=q.device)
            kpos = torch.arange(n_keys, device=q.device)
            mask = (qpos[:, None] - kpos[None, :]).abs() <= window
        return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]
    blocks = -(-n_queries // window)
    heads, dim = q.shape[0], q.shape[2]
    q = F.pad(q, (0, 0, 0, blocks * window - n_queries)).view(heads, blocks, window, dim)
    # Keys q_start-w .. q_start+blocks*w+w, zero-padded at both ends, cut into overlapping spans.
    left = window - q_start
    right = q_start + blocks * window + window - n_keys
    span = 3 * window

    def spans(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, max(left, 0), max(right, 0)))[:, max(-left, 0) :]
        return x.unfold(1, span, window).transpose(-1, -2)

    key = (q_start, n_queries, n_keys, window)
    if key not in masks:
        masks[key] = _local_mask(q_start, n_queries, n_keys, window, q.device)
    mask = masks[key].expand(heads, -1, -1, -1)  # SDPA wants a 4-d mask to use its fused kernel
    out = F.scaled_dot_product_attention(q, spans(k), spans(v), attn_mask=mask)
    return out.reshape(heads, blocks * window, dim)[:, :n_queries]


def run_backbone(
    backbone: ModernBertModel,
    hidden: torch.Tensor,
    lengths: Sequence[int],
    keep_from: Sequence[int],
) -> torch.Tensor:
    """ModernBERT's layers and final norm over packed sequences, without padding.

    `hidden` (sum(lengths), d) holds the rows of each sequence one after another, after the
    embedding LayerNorm; each sequence has its own positions 0.. and attends only to itself.
    Returns, packed the same way, each sequence's rows from `keep_from[i]` on: the last layer
    computes only those rows (the others are only keys and values there).
    """
    config = backbone.config
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    device = hidden.device
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    tables = _rotary(backbone, positions)
    keep = torch.cat(
        [
            torch.arange(s + k, s + n, device=device)
            for s, n, k in zip(starts[:-1], lengths, keep_from, strict=True)
        ]
    )
    masks: dict = {}
    layers = list(backbone.layers)
    x = hidden.float()
    for index, layer in enumerate(layers):
        last = index == len(layers) - 1
        attn = layer.attn
        cos, sin = tables[layer.attention_type]
        window = None if attn.sliding_window is None else attn.sliding_window - 1
        h = layer.attn_norm(x)
        qkv = _linear(attn.Wqkv, h).view(-1, 3, heads, head_dim)
        v = qkv[:, 2]
        if last:
            k = _rotate(qkv[:, 1], cos, sin)
            q = _rotate(qkv[keep, 0], cos[keep], sin[keep])
        else:
            q, k = _rotate(qkv[:, :2], cos, sin).unbind(1)
        outputs, q_row = [], 0
        for start, n, first_kept in zip(starts[:-1], lengths, keep_from, strict=True):
            q_start = first_kept if last else 0
            n_queries = n - q_start
            if n_queries <= 0:
                continue
            out = _attention(
                q[q_row : q_row + n_queries].transpose(0, 1),
                k[start : start + n].transpose(0, 1),
                v[start : start + n].transpose(0, 1),
                q_start,
                window,
                masks,
            )
            outputs.append(out.transpose(0, 1).reshape(n_queries, heads * head_dim))
            q_row += n_queries
        if last:
            x = x[keep]
        if outputs:
            x = x + _linear(attn.Wo, torch.cat(outputs))
        mlp = layer.mlp
        h = layer.mlp_norm(x).to(mlp.Wi.weight.dtype)
        act, gate = F.linear(h, mlp.Wi.weight, mlp.Wi.bias).chunk(2, dim=-1)
        x = x + _linear(mlp.Wo, mlp.act(act) * gate)
    if not layers:
        x = x[keep]
    return backbone.final_norm(x)


def check_backbone_contract(backbone: ModernBertModel) -> None:
    """Fail at load, naming the supported transformers range, when ModernBERT's internals are
    not what `run_backbone` re-implements: it reads them directly instead of calling the
    model, so a renamed attribute or a changed convention would otherwise give wrong vectors
    or an obscure error at the first embedding."""

    def fail(what: str) -> UnsupportedTransformersError:
        return UnsupportedTransformersError(
            f"The installed transformers {transformers.__version__} does not provide what "
            f"cde-rag's engine relies on in ModernBERT ({what}). cde-rag supports transformers"
            f"{SUPPORTED_TRANSFORMERS}: pip install 'transformers{SUPPORTED_TRANSFORMERS}'."
        )

    if ModernBertRotaryEmbedding is None:
        raise fail("modeling_modernbert.ModernBertRotaryEmbedding is missing")
    config = backbone.config
    layer_types = getattr(config, "layer_types", None)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layer_types, (list, tuple)) or not set(layer_types) <= _LAYER_TYPES:
        raise fail(f"config.layer_types is {layer_types!r}, not a list of {sorted(_LAYER_TYPES)}")
    if not isinstance(layers, nn.ModuleList) or len(layers) != len(layer_types):
        raise fail("model.layers does not hold one layer per config.layer_types entry")
    embeddings = getattr(backbone, "embeddings", None)
    for name in ("tok_embeddings", "norm"):
        if not isinstance(getattr(embeddings, name, None), nn.Module):
            raise fail(f"model.embeddings.{name} is missing")
    if not isinstance(getattr(backbone, "final_norm", None), nn.Module):
        raise fail("model.final_norm is missing")
    rotary = getattr(backbone, "rotary_emb", None)
    for layer_type in set(layer_types):
        inv_freq = getattr(rotary, f"{layer_type}_inv_freq", None)
        scaling = getattr(rotary, f"{layer_type}_attention_scaling", None)
        if not isinstance(inv_freq, torch.Tensor) or not isinstance(scaling, (int, float)):
            raise fail(f"rotary_emb.{layer_type}_inv_freq / _attention_scaling are missing")
    hidden = config.hidden_size
    for index, (layer, layer_type) in enumerate(zip(layers, layer_types, strict=True)):
        where = f"layers[{index}]"
        if getattr(layer, "attention_type", None) != layer_type:
            raise fail(f"{where}.attention_type is not config.layer_types[{index}]")
        attn, mlp = getattr(layer, "attn", None), getattr(layer, "mlp", None)
        for owner, name in ((layer, "attn_norm"), (layer, "mlp_norm"), (mlp, "act")):
            if not callable(getattr(owner, name, None)):
                raise fail(f"{where}.{name} is missing")
        for owner, name, rows in (
            (attn, "Wqkv", 3 * hidden),
            (attn, "Wo", hidden),
            (mlp, "Wi", 2 * config.intermediate_size),
            (mlp, "Wo", hidden),
        ):
            linear = getattr(owner, name, None)
            if not isinstance(linear, nn.Linear) or linear.out_features != rows:
                raise fail(f"{where} has no {name} linear layer of {rows} outputs")
        # The engine attends within `sliding_window - 1` positions each side: local_attention/2.
        window = getattr(attn, "sliding_window", "missing")
        expected = config.local_attention // 2 + 1 if layer_type == "sliding_attention" else None
        if window != expected:
            raise fail(
                f"{where}.attn.sliding_window is {window!r}, expected {expected!r} for "
                f"local_attention {config.local_attention}"
            )


def _segment_means(rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Mean of each run of `counts[i]` consecutive rows (zeros for an empty run)."""
    sums = [part.sum(dim=0) for part in torch.split(rows, list(counts))]
    totals = torch.tensor(counts, dtype=rows.dtype, device=rows.device)[:, None]
    return torch.stack(sums) / (totals + 1e-20)


class FirstStage(nn.Module):
    """Embeds minicorpus documents into dataset embeddings."""

    def __init__(self, config: ModernBertConfig, weights: Mapping[str, torch.Tensor]):
        super().__init__()
        with torch.device("meta"):
            self.embedder = ModernBertModel(config)
        check_backbone_contract(self.embedder)
        self.mlp = _mlp(weights, f"{FIRST_STAGE}mlp.", nn.GELU())

    def forward(self, input_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Dataset embeddings of packed token ids (`lengths[i]` tokens per document)."""
        embeddings = self.embedder.embeddings
        hidden = embeddings.norm(embeddings.tok_embeddings(input_ids).float())
        rows = run_backbone(self.embedder, hidden, lengths, [0] * len(lengths))
        return self.mlp(_segment_means(rows, lengths))


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
        check_backbone_contract(self.backbone)
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
        self._soft_prompts: dict[tuple, torch.Tensor] = {}

    def prefix(self, dataset_embeddings: torch.Tensor) -> torch.Tensor:
        """The rows every document attends to: the dataset embeddings, then the soft prompt."""
        return torch.cat([dataset_embeddings, self.soft_prompt(dataset_embeddings)], dim=0)

    def soft_prompt(self, like: torch.Tensor) -> torch.Tensor:
        """The soft prompt rows, on `like`'s device and dtype. They project a constant (ones),
        so they are computed once, not on every call (19 MB of weights read per query)."""
        key = (like.device, like.dtype)
        cached = self._soft_prompts.get(key)
        if cached is None:
            hidden = self.backbone.config.hidden_size
            with torch.inference_mode():
                ones = torch.ones(hidden, device=like.device, dtype=like.dtype)
                cached = self.prompt_projection(ones).reshape(self.num_soft_prompts, hidden)
            self._soft_prompts[key] = cached
        return cached

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: Sequence[int],
        prefix: torch.Tensor,
        pool_starts: Sequence[int],
    ) -> torch.Tensor:
        """Normalised embeddings of packed token ids (`lengths[i]` tokens per text); each
        text's pooled tokens are those from `pool_starts[i]` on (see `pool_ignore_*`)."""
        embeddings = self.backbone.embeddings
        n_prefix = prefix.shape[0]
        # Document tokens pass the embedding LayerNorm twice (once as tokens, once as inputs),
        # prefix rows once: as the reference does.
        tokens = embeddings.norm(embeddings.norm(embeddings.tok_embeddings(input_ids).float()))
        prefix = embeddings.norm(prefix.float())
        parts = []
        for doc in torch.split(tokens, list(lengths)):
            parts += [prefix, doc]
        sizes = [n_prefix + n for n in lengths]
        if self.pool_ignore_contextual_tokens:
            keep = [n_prefix + start for start in pool_starts]
            rows = run_backbone(self.backbone, torch.cat(parts), sizes, keep)
            pooled = _segment_means(
                rows, [n - start for n, start in zip(lengths, pool_starts, strict=True)]
            )
        else:
            rows = run_backbone(self.backbone, torch.cat(parts), sizes, [0] * len(lengths))
            kept = []
            for seq, start in zip(torch.split(rows, sizes), pool_starts, strict=True):
                kept += [seq[:n_prefix], seq[n_prefix + start :]]
            rows = torch.cat(kept)
            pooled = _segment_means(
                rows, [n_prefix + n - s for n, s in zip(lengths, pool_starts, strict=True)]
            )
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
    for name, tensor in own.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"Weight {prefix}{name} contains NaN or infinite values: the checkpoint file is "
                "damaged. Download it again (or restore the folder from a good copy)."
            )
    module.load_state_dict(own, assign=True)
    backbones = [sub for sub in module.modules() if isinstance(sub, ModernBertModel)]
    for sub in backbones:  # off the meta device before moving
        sub.rotary_emb = ModernBertRotaryEmbedding(config=sub.config)
    module = module.to(device=device, dtype=torch.float32)
    # Fast mode: only the layers' matrix multiplies run in `dtype`; embeddings, norms, rotary,
    # attention softmax, pooling and projections stay float32, where precision matters.
    for sub in backbones:
        for layer in sub.layers:
            for linear in (layer.attn.Wqkv, layer.attn.Wo, layer.mlp.Wi, layer.mlp.Wo):
                linear.to(dtype=dtype)
    # Rotary frequencies are non-persistent buffers: rebuild them in float32 on the device.
    for sub in backbones:
        sub.rotary_emb = ModernBertRotaryEmbedding(config=sub.config, device=device)
    return module.eval().requires_grad_(False)
