"""What a backbone's `extract` makes of its arguments, whatever the architecture: the model
input pixels (`model_input`) and one prompt per row (`prompt_rows`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..imageio import ImageInput

__all__ = ["model_input", "prompt_rows"]


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
