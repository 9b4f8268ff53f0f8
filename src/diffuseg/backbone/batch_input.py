"""What a backbone's `extract` makes of its arguments, whatever the architecture: the model
input pixels (`model_input`), one prompt per row (`prompt_rows`), the VAE latents
(`vae_latents`) and the (noised) latent of every row (`latent_rows`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..imageio import ImageInput
from ..ops.noise import batch_noise, per_item_generators

__all__ = ["model_input", "prompt_rows", "vae_latents", "latent_rows"]


def model_input(
    images: ImageInput | Sequence[ImageInput] | torch.Tensor,
    preprocess: Callable[[list[Any]], tuple[torch.Tensor, list[dict[str, Any]]]],
    size_multiple: int,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """`extract`'s pixels (B, 3, H, W) float32 in [0, 1] and one meta dict per image: a
    (B, 3, H, W) tensor is taken as it is (its sides must be multiples of `size_multiple`), other
    images go through `preprocess` (the backbone's, with its size and resize mode bound).

    Raises:
        ValueError: a tensor whose sides are not multiples of `size_multiple`.
    """
    if not (isinstance(images, torch.Tensor) and images.ndim == 4):
        return preprocess([images] if not isinstance(images, (list, tuple)) else list(images))
    pixels = images.float().clamp(0, 1)
    h, w = pixels.shape[-2:]
    if w % size_multiple or h % size_multiple:
        raise ValueError(f"image tensor sides must be multiples of {size_multiple}, got {(h, w)}.")
    metas = [{"input_size": [h, w], "crop_box": [0, 0, w, h], "model_size": [h, w]} for _ in range(len(pixels))]
    return pixels, metas


def prompt_rows(prompts: str | Sequence[str], images: int, per_image: Any) -> list[str]:
    """`extract`'s prompt per row: one prompt for all rows, or one per row (image-major).

    Raises:
        ValueError: naming `prompts_per_image` if it is not an int >= 1, or when the prompts do not
            give one per row.
    """
    if isinstance(per_image, bool) or not isinstance(per_image, int) or per_image < 1:
        raise ValueError(f"`prompts_per_image` must be an int >= 1, got {per_image!r}.")
    rows = images * per_image
    prompt_list = [prompts] * rows if isinstance(prompts, str) else list(prompts)
    if len(prompt_list) != rows:
        raise ValueError(f"got {len(prompt_list)} prompts for {images} images x {per_image} prompts each.")
    return prompt_list


def vae_latents(
    vae: Any,
    pixels: torch.Tensor,
    sample: str,
    generator: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """VAE-encode (B, 3, H, W) pixels in [0, 1]: (B, C, H/f, W/f) latents ``(z - shift) * scale``
    in `dtype`, from the posterior mean or a draw (`sample` "mean" / "sample", with `generator`:
    one, or one per image).

    Raises:
        ValueError: naming `latent_mode` for another `sample`.
    """
    if sample not in ("mean", "sample"):
        raise ValueError(f"`latent_mode` must be 'mean' or 'sample', got {sample!r}.")
    vae_dtype = next(vae.parameters()).dtype
    dist = vae.encode(pixels.to(device, vae_dtype) * 2 - 1).latent_dist
    z = dist.mean if sample == "mean" else dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).to(dtype)


def latent_rows(
    backbone: Any,
    pixels: torch.Tensor,
    metas: list[dict[str, Any]],
    *,
    timestep: int,
    latent_mode: str,
    add_noise: bool,
    shared_noise: bool,
    generator: Any,
    prompts_per_image: int,
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """The latent of every row of an `extract` pass: `backbone.encode_images`, noised to
    `timestep` by `backbone.add_noise` if asked (noise from `generator`: one, or one per image;
    `shared_noise`: one draw for the batch), each image's latent, pixels and meta repeated for
    its `prompts_per_image` rows (image-major).

    Returns:
        (latents (B * P, C, h, w), pixels (B * P, 3, H, W), metas (B * P)).
    """
    generators = per_item_generators(generator, pixels.shape[0])  # checked before any work
    latents = backbone.encode_images(pixels, latent_mode, generators if generators is not None else generator)
    if add_noise:
        noise = batch_noise(latents.shape, generator, backbone.device, shared=shared_noise).to(latents.dtype)
        latents = backbone.add_noise(latents, noise, timestep)
    if prompts_per_image > 1:
        latents = latents.repeat_interleave(prompts_per_image, dim=0)
        pixels = pixels.repeat_interleave(prompts_per_image, dim=0)
        metas = [m for m in metas for _ in range(prompts_per_image)]
    return latents, pixels, metas
