"""The training objective: denoise a class's mask latent given the image latent and the class.

For a batch of (image latent, mask latent, text embedding) triples: t ~ U{0..T-1}, pyramid noise,
``z_t = add_noise(z_mask, noise, t)``, the UNet reads ``cat[z_image, z_t]`` with the class text and
is trained with MSE against the scheduler's target: the noise ("epsilon") or the velocity
("v_prediction", SD 2 and the toy model), as Seg-diffusion's ``run_train.py`` l.565-597.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.denoising import prediction_target
from .noise import pyramid_noise

__all__ = ["denoising_loss", "prediction_target"]


def denoising_loss(
    unet: nn.Module,
    scheduler: Any,
    image_latents: torch.Tensor,
    mask_latents: torch.Tensor,
    text: torch.Tensor,
    generator: torch.Generator | None = None,
    pyramid_levels: int = 6,
    pyramid_discount: float = 0.3,
    added_cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """MSE between the UNet's prediction and the scheduler's target for one batch.

    Args:
        unet: the widened UNet (reads 2 x C latent channels).
        scheduler: the base model's scheduler (``add_noise``, ``get_velocity``, ``prediction_type``).
        image_latents, mask_latents: (B, C, h, w).
        text: (B, T, D) text-encoder states of each row's class prompt.
        generator: randomness for t and the noise.
        added_cond: the UNet's `added_cond_kwargs` (SDXL family), one row per batch row.

    Returns:
        A scalar loss tensor (float32).
    """
    b = mask_latents.shape[0]
    device = mask_latents.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    num = int(scheduler.config.num_train_timesteps)
    t = torch.randint(0, num, (b,), generator=generator, device=gen_device).to(device)
    noise = pyramid_noise(tuple(mask_latents.shape), generator, pyramid_levels, pyramid_discount).to(
        device, mask_latents.dtype
    )
    noisy = scheduler.add_noise(mask_latents, noise, t)
    pred = unet(
        torch.cat([image_latents, noisy], 1), t, encoder_hidden_states=text, added_cond_kwargs=added_cond
    ).sample
    target = prediction_target(scheduler, mask_latents, noise, t)
    return F.mse_loss(pred.float(), target.float())
