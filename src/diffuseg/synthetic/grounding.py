"""Token grounding loss for the proving-ground model (TokenCompose, Wang et al., CVPR 2024).

Stable Diffusion's class-word cross-attention localises objects because it was trained on
billions of captions; a few thousand CPU steps on synthetic scenes do not get there on their own
(the toy model's word-token cross-attention stayed at chance for 4,748 steps, see
docs/proving_ground.md). TokenCompose (arXiv 2312.03626) fine-tunes SD with an extra
token-level loss that pulls each noun's cross-attention mass into that noun's segmentation
mask; we add its ``L_token`` term, with the scenes' exact label maps as the masks:

    L_token = mean over layers, images and class-word tokens i of (1 - sum_p A_i(p) M_i(p) / sum_p A_i(p))^2

where ``A_i(p)`` is the head-averaged cross-attention probability of token i at pixel p and
``M_i`` the mask of the class the word names (area fractions at the layer's grid). TokenCompose's
``L_pixel`` (a per-pixel BCE pushing the noun's probability to 1 inside the mask) is left out:
with the one-word-per-token text encoder of the toy model it would starve the colour and texture
words of attention, and the colours of objects could no longer be drawn.

Cross-attention is read through diffusers' attention-processor API (`grounding_attention`,
a context manager that restores the original processors in ``finally``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GroundingAttnProcessor", "grounding_attention", "token_classes", "token_grounding_loss"]


class GroundingAttnProcessor:
    """Cross-attention processor that keeps the head-averaged probabilities, with gradients.

    The math of ``diffusers.models.attention_processor.AttnProcessor`` for the layers of a
    `UNet2DConditionModel` transformer block (3-D input, no spatial or group norm); maps are
    appended to `store` as (B, N, T) tensors of the input dtype, rows summing to 1.
    """

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise ValueError(
                "GroundingAttnProcessor handles cross-attention layers with (B, N, C) input only; "
                f"got encoder_hidden_states={'None' if encoder_hidden_states is None else 'tensor'}, "
                f"hidden_states.ndim={hidden_states.ndim}."
            )
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("GroundingAttnProcessor does not support spatial_norm / group_norm layers.")
        residual = hidden_states
        batch, n, _ = hidden_states.shape
        mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, N, d)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, T, d)
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, mask)  # (B*heads, N, T)
        self.store.append(probs.view(batch, attn.heads, n, -1).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, N, heads*d)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def grounding_attention(unet: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Install `GroundingAttnProcessor` on every cross-attention layer (``attn2``) of `unet`.

    Yields the list the maps are appended to, one (B, N, T) tensor per layer call in call
    order. The original processors are restored on exit, also when the body raises.
    """
    original = dict(unet.attn_processors)
    store: list[torch.Tensor] = []
    unet.set_attn_processor(
        {k: GroundingAttnProcessor(store) if k.endswith("attn2.processor") else v for k, v in original.items()}
    )
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def token_classes(input_ids: torch.Tensor, class_token_ids: Sequence[int]) -> torch.Tensor:
    """Class index of every token: (B, T) int64, -1 where the token names no class.

    Args:
        input_ids: (B, T) int64 token ids.
        class_token_ids: the single token id of each class name (index = class id).
    """
    ids = torch.as_tensor(list(class_token_ids), dtype=input_ids.dtype, device=input_ids.device)
    hit = input_ids[..., None] == ids  # (B, T, C)
    return torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(input_ids, -1))


def token_grounding_loss(
    maps: Sequence[torch.Tensor],
    labels: torch.Tensor,
    classes: torch.Tensor,
    num_classes: int,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """TokenCompose's ``L_token`` averaged over layers (see the module docstring).

    Args:
        maps: per layer, (B, N, T) cross-attention probabilities on a square N = r * r grid.
        labels: (B, H, W) int64 class ids of the scenes (H, W multiples of every r).
        classes: (B, T) class id named by each token, -1 for other tokens (`token_classes`).
        num_classes: number of classes (label ids are in [0, num_classes)).
        sample_weight: optional (B,) weights (e.g. 0 for timesteps where grounding is off).

    Returns:
        Scalar loss in [0, 1]; 0 when no token names a class present in its scene.
    """
    if not maps:
        raise ValueError("`maps` is empty: run the UNet inside `grounding_attention` first.")
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    present = onehot.flatten(2).amax(-1) > 0  # (B, C)
    safe = classes.clamp_min(0)
    valid = (classes >= 0) & torch.gather(present, 1, safe)  # (B, T)
    if sample_weight is not None:
        valid_w = valid.float() * sample_weight[:, None].float()
    else:
        valid_w = valid.float()
    denom = valid_w.sum()
    if denom == 0:
        return maps[0].sum() * 0.0
    pooled: dict[int, torch.Tensor] = {}
    total = maps[0].new_zeros((), dtype=torch.float32)
    for m in maps:
        r = math.isqrt(m.shape[1])
        if r * r != m.shape[1]:
            raise ValueError(f"cross-attention map with {m.shape[1]} queries is not on a square grid.")
        if r not in pooled:
            pooled[r] = F.adaptive_avg_pool2d(onehot, r).flatten(2)  # (B, C, r*r) area fractions
        token_masks = torch.gather(pooled[r], 1, safe[..., None].expand(-1, -1, r * r))  # (B, T, N)
        a = m.float().transpose(1, 2)  # (B, T, N)
        inside = (a * token_masks).sum(-1) / a.sum(-1).clamp_min(1e-12)  # (B, T) in [0, 1]
        total = total + ((1.0 - inside) ** 2 * valid_w).sum() / denom
    return total / len(maps)
