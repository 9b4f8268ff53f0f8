"""The mask-denoising UNet: the base model's UNet with `conv_in` widened to read the image latent
and the noisy mask latent side by side.

Marigold (Ke et al., CVPR 2024) duplicates the pretrained `conv_in` weights over the new input
channels and halves them, so the widened layer computes exactly the base layer when both halves
hold the same latent, and fine-tuning starts from the pretrained function. Seg-diffusion's
published code instead loads the UNet with ``in_channels=8, ignore_mismatched_sizes=True``
(``training/run_train.py`` l.359-363), which re-initialises `conv_in` randomly: a bug, not
reproduced here.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["widen_conv_in"]


def widen_conv_in(unet: nn.Module, copies: int = 2) -> nn.Module:
    """Widen `unet.conv_in` in place to `copies` x its input channels (Marigold initialisation).

    The new weight is the old one repeated `copies` times along the input channels and divided
    by `copies`; the bias is kept. The UNet's config records the new ``in_channels`` so that
    `save_pretrained` / `from_pretrained` round-trip it.

    Args:
        unet: a diffusers `UNet2DConditionModel` whose `conv_in` reads the latent channels
            (``config.in_channels == config.out_channels``: SD 1.x / 2.x / SDXL / the toy).
        copies: how many latents are stacked (2: image latent + mask latent).

    Returns:
        The same `unet`.

    Raises:
        ValueError: if the UNet has no Conv2d `conv_in`, or it already reads more channels than
            it predicts (an inpainting or already widened UNet cannot be widened again).
    """
    conv = getattr(unet, "conv_in", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"this UNet cannot be widened: its `conv_in` is {type(conv).__name__}, not a Conv2d.")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 2:
        raise ValueError(f"`copies` must be an int >= 2, got {copies!r}.")
    out_channels = getattr(unet.config, "out_channels", conv.in_channels)
    if conv.in_channels != out_channels:
        raise ValueError(
            f"this UNet cannot be widened: its `conv_in` reads {conv.in_channels} channels but it predicts "
            f"{out_channels} (an inpainting or already widened UNet); start from a text-to-image base model."
        )
    wide = nn.Conv2d(
        conv.in_channels * copies,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        wide.weight.copy_(conv.weight.repeat(1, copies, 1, 1) / copies)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    wide.requires_grad_(conv.weight.requires_grad)
    unet.conv_in = wide
    unet.register_to_config(in_channels=conv.in_channels * copies)
    return unet
