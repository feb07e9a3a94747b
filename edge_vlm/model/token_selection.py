"""Fewer image tokens, chosen by the vision tower's own attention (see edge_vlm.image_tokens for the setting).

`vision_features` is the one place the vision tower's output becomes what the projector reads, for the PyTorch model
(LlavaPhiForConditionalGeneration) and for the exported vision graph alike, so both compute the same thing. Every
step exports to ONNX (opset 18+): TopK, Sort (as TopK), Gather, MatMul, ArgMax; every size is fixed by the setting,
so the graph's output is [batch, K, D] with a static K.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_vlm.errors import EdgeVLMError
from edge_vlm.image_tokens import TokenSelection


def vision_features(vision_tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int,
                    selection: TokenSelection | None = None) -> torch.Tensor:
    """pixel_values [B, 3, S, S] -> what the projector reads: hidden state `feature_layer` (LLaVA's -2) without CLS,
    [B, N, vision hidden] in patch order; with a `selection`, [B, K, vision hidden] (see select_tokens)."""
    hidden = vision_tower(pixel_values, output_hidden_states=True).hidden_states
    patches = hidden[feature_layer][:, 1:]
    if selection is None:  # the paper's model, computed exactly as before
        return patches
    layer, layer_input = feature_layer_and_input(vision_tower, hidden, feature_layer)
    scores, keys = cls_attention(layer, layer_input)
    return select_tokens(patches, scores, keys, selection)


def feature_layer_and_input(vision_tower: nn.Module, hidden: tuple, feature_layer: int):
    """The encoder layer that produced hidden state `feature_layer`, and that layer's input. hidden_states[0] is the
    encoder's input (embeddings after CLIP's pre-layernorm) and hidden_states[i] the output of layer i - 1, so
    hidden state h comes from layers[h - 1], which read hidden_states[h - 1] (for CLIP-L's -2: layer 23 of 24)."""
    index = feature_layer % len(hidden)
    if index == 0:
        raise EdgeVLMError("image-token selection needs a feature layer after an attention layer, but the model "
                           "reads the vision tower's embeddings (vision_feature_layer 0)")
    return vision_tower.encoder.layers[index - 1], hidden[index - 1]


def cls_attention(layer: nn.Module, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, N] the CLS token's attention over the N patches, averaged over heads; [B, N, head dim] the patches'
    attention keys, averaged over heads) of one CLIP encoder layer, given that layer's input [B, 1 + N, D].

    Computed here from the layer's own weights because transformers' CLIP with SDPA attention returns no attention
    weights: layer_norm1, then the q (CLS row only) and k projections, softmax(q . k / sqrt(head dim)) over all
    1 + N positions (CLS included, as the layer itself attends), the patch columns kept."""
    attention = layer.self_attn
    heads, head_dim = attention.num_heads, attention.head_dim
    normed = layer.layer_norm1(layer_input)
    batch, positions = normed.shape[0], normed.shape[1]
    query = attention.q_proj(normed[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, hd]
    keys = attention.k_proj(normed).view(batch, positions, heads, head_dim).transpose(1, 2)  # [B, H, T, hd]
    weights = torch.softmax((query @ keys.transpose(-1, -2)) * attention.scale, dim=-1)  # [B, H, 1, T]
    return weights[:, :, 0, 1:].mean(dim=1), keys[:, :, 1:].mean(dim=1)


def select_tokens(patches: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor,
                  selection: TokenSelection) -> torch.Tensor:
    """[B, N, D] patches -> [B, K, D]: the `dominant` patches of highest `scores` [B, N] in their original order,
    then (contextual > 0) the other patches merged into `contextual` tokens by the similarity of `keys` [B, N, k]."""
    count = patches.shape[1]
    dominant = selection.dominant
    if not (1 <= dominant and selection.image_tokens < count):
        raise EdgeVLMError(f"internal: a selection of {selection.image_tokens} tokens from {count}")
    top = scores.topk(dominant, dim=1).indices
    # One sort orders both groups by position: a kept patch sorts after every other (position + N), so the last
    # `dominant` positions are the kept ones and the first N - dominant the rest, each group in patch order.
    # In float32 whatever the model's dtype: bfloat16 holds whole numbers exactly only up to 256.
    kept_flag = torch.zeros(scores.shape, device=scores.device, dtype=torch.float32).scatter(1, top, 1.0)
    position = torch.arange(count, device=scores.device, dtype=torch.float32)
    order = torch.argsort(position + count * kept_flag, dim=1)
    kept = _gather(patches, order[:, count - dominant:])
    if not selection.contextual:
        return kept
    rest = order[:, : count - dominant]
    merged = merge_contextual(_gather(patches, rest), _gather(keys, rest), selection.contextual)
    return torch.cat([kept, merged], dim=1)


def merge_contextual(patches: torch.Tensor, keys: torch.Tensor, contextual: int) -> torch.Tensor:
    """[B, R, D] patches left out (in patch order) -> [B, contextual, D]. As VisionZip: `contextual` of them, evenly
    spaced, are the targets; each other patch joins the target whose key is most similar (cosine). A contextual
    token is the average of its group, target included (VisionZip adds the target to its members' mean instead;
    an average stays at the scale of the hidden states the projector was trained on)."""
    count = patches.shape[1]
    step = max(1, count // contextual)
    targets = list(range(0, count, step))[:contextual]
    members = [i for i in range(count) if i not in set(targets)]
    target_patches = patches[:, targets]
    if not members:
        return target_patches
    unit = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    similarity = unit[:, members] @ unit[:, targets].transpose(1, 2)  # [B, M, C]
    choice = similarity.argmax(dim=-1, keepdim=True)
    assign = (choice == torch.arange(len(targets), device=patches.device)).to(patches.dtype)  # [B, M, C] one-hot
    sums = target_patches + assign.transpose(1, 2) @ patches[:, members]
    return sums / (1 + assign.sum(dim=1)).unsqueeze(-1)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, N, D], index [B, K] -> [B, K, D]."""
    return torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
