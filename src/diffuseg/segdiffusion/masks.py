"""An invertible mask <-> latent encoding through the frozen VAE, and labels from decoded masks.

One binary mask per (image, class): the mask becomes a 3-channel image in [-1, 1] (0 -> -1,
1 -> +1, the same on every channel) that the VAE encodes like any image (posterior mean times
its scaling factor, as Seg-diffusion's ``run_train.py`` l.545-556); a latent is decoded by the VAE,
averaged over the 3 output channels, clipped to [-1, 1] and mapped to a probability in [0, 1]
(``semantic_pipeline.py`` l.164-204). Unlike the reference, which trains on one gray "depth-like"
map whose levels are class ids min-max normalised per batch (so class identity is lost), each
class is its own mask, and the label map is the argmax over classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..backbone.backbone import DiffusionBackbone

__all__ = ["encode_masks", "decode_masks", "labels_from_probabilities"]


@torch.no_grad()
def encode_masks(backbone: DiffusionBackbone, masks: torch.Tensor) -> torch.Tensor:
    """Encode masks with the backbone's VAE.

    Args:
        backbone: a `DiffusionBackbone` (its `encode_images` applies scaling and shift).
        masks: (N, H, W) bool or float in [0, 1]; H, W multiples of the VAE factor.

    Returns:
        (N, C_latent, H/f, W/f) latents in the backbone's dtype.
    """
    if masks.ndim != 3:
        raise ValueError(f"`masks` must be (N, H, W), got {tuple(masks.shape)}.")
    m = masks.float().clamp(0, 1)
    return backbone.encode_images(m[:, None].expand(-1, 3, -1, -1), "mean")


@torch.no_grad()
def decode_masks(backbone: DiffusionBackbone, latents: torch.Tensor) -> torch.Tensor:
    """Decode mask latents to probabilities.

    Args:
        backbone: a `DiffusionBackbone`.
        latents: (N, C_latent, h, w) as `encode_masks` returns.

    Returns:
        (N, h*f, w*f) float32 in [0, 1]: the mean of the decoded channels, clipped to [-1, 1],
        mapped to [0, 1].
    """
    vae = backbone.vae
    config = vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    z = latents.to(next(vae.parameters()).dtype) / config.scaling_factor + shift
    images = vae.decode(z).sample.float()  # (N, 3, H, W) in about [-1, 1]
    return (images.mean(1).clamp(-1, 1) + 1) / 2


def labels_from_probabilities(
    probabilities: torch.Tensor, background: int | None = None, threshold: float | None = None
) -> torch.Tensor:
    """The label map: argmax over classes of their mask probabilities.

    Args:
        probabilities: (K, H, W) float in [0, 1], one decoded mask per class.
        background: the class index pixels fall back to when no class reaches `threshold`.
        threshold: with `background`, pixels whose best probability is below it get
            `background`; None = plain argmax.

    Returns:
        (H, W) int64 class indices.
    """
    if probabilities.ndim != 3 or probabilities.shape[0] < 1:
        raise ValueError(f"`probabilities` must be (K, H, W) with K >= 1, got {tuple(probabilities.shape)}.")
    if (threshold is None) != (background is None):
        raise ValueError("give `background` and `threshold` together, or neither.")
    best, labels = probabilities.max(0)
    if threshold is not None:
        if not 0 <= background < probabilities.shape[0]:
            raise ValueError(f"`background` must index one of the {probabilities.shape[0]} classes, got {background}.")
        labels = torch.where(best < threshold, torch.full_like(labels, background), labels)
    return labels
