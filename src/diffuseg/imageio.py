"""Reading images robustly and turning them into model input.

`load_image` honours EXIF orientation and converts grayscale, palette, RGBA and 16-bit images
to 8-bit RGB. `preprocess` crops/resizes a batch to the model's input size and records, per
image, which region of the input the result covers (`crop_box`), so labels can be mapped back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "check_finite",
    "check_pixels",
    "check_resize_mode",
    "ImageLoadError",
    "load_image",
    "as_pil",
    "to_rgb",
    "preprocess",
    "stack_batch",
    "RESIZE_MODES",
    "ImageInput",
]

logger = logging.getLogger(__name__)

RESIZE_MODES = ("crop", "squash", "keep_aspect", "short_side")
ImageInput = Image.Image | np.ndarray | torch.Tensor | str | os.PathLike


def check_resize_mode(mode: str) -> str:
    """Return `mode` if it is one of `RESIZE_MODES`; raise `ValueError` naming `resize_mode` otherwise."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"`resize_mode` must be one of {RESIZE_MODES}, got {mode!r}.")
    return mode


def check_finite(pixels: np.ndarray | torch.Tensor) -> None:
    """Refuse float pixel values that are NaN or infinite (nothing can be segmented from them).

    Raises:
        ValueError: naming `image` and how many of its values are not finite.
    """
    finite = torch.isfinite(pixels) if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.isfinite(pixels))
    bad = finite.numel() - int(finite.sum())
    if bad:
        raise ValueError(
            f"`image` has {bad:,} NaN or infinite value(s) of {finite.numel():,}; give finite pixel values "
            "(float images in [0, 1])."
        )


class ImageLoadError(ValueError):
    """A file is missing, unreadable or not an image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled, alpha dropped
    over black, palette images expanded)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        check_finite(arr)
        if image.mode.startswith("I;16"):
            hi = 65535.0
        elif image.mode == "I":
            hi = 65535.0 if arr.max() > 255 else 255.0
        else:
            hi = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
        arr = np.clip(arr / hi * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def check_pixels(size: tuple[int, int], max_pixels: int | None, what: str = "the image") -> None:
    """Refuse an image of `size` (width, height) above `max_pixels` (None: no limit).

    Raises:
        ImageLoadError: naming `max_pixels`, `what` and its size.
    """
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{what} is {width}x{height} = {width * height:,} pixels, above `max_pixels` {max_pixels:,}; "
            "it was not decoded."
        )


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as 8-bit RGB, applying its EXIF orientation.

    Args:
        path: the image file.
        max_pixels: largest image read (width x height), checked from the file's header before
            the pixels are decoded; None: no limit (Pillow's own decompression-bomb limit holds).

    Raises:
        ImageLoadError: if the file is missing, unreadable, not an image or above `max_pixels`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            check_pixels(im.size, max_pixels, str(path))
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError as e:  # Pillow refuses to open it: larger than any limit we take
        refused = max_pixels is not None and max_pixels < 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = f", above `max_pixels` {max_pixels:,}" if refused else ""
        raise ImageLoadError(f"cannot read {path}: {e}{limit}; it was not decoded.") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageLoadError(f"cannot read {path} as an image: {e}") from e


def as_pil(image: ImageInput) -> Image.Image:
    """Any supported image input (path, PIL, array, (3, H, W) tensor in [0, 1]) as RGB PIL."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be (3, H, W) or (1, H, W), got {tuple(image.shape)}.")
        if not image.is_floating_point():
            raise ValueError(f"`image`: a tensor image must be a float tensor in [0, 1], got {image.dtype}.")
        check_finite(image)
        arr = image.float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4)):
            arr = image
            if arr.dtype == np.uint16:
                arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
            elif arr.dtype.kind == "f":
                check_finite(arr)
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            elif arr.dtype != np.uint8:
                raise ValueError(f"unsupported image array dtype {arr.dtype}; use uint8, uint16 or float.")
            return to_rgb(Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr))
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}.")
    raise ValueError(f"unsupported image type {type(image).__name__}; give a path, PIL image, array or tensor.")


@dataclass(frozen=True)
class _Plan:
    crop_box: tuple[int, int, int, int]  # left, top, right, bottom in input pixels
    out_size: tuple[int, int]  # (H, W) model input


def _plan(w: int, h: int, size: int | None, mode: str, multiple: int) -> _Plan:
    if mode == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        target = size if size is not None else max(multiple, side // multiple * multiple)
        return _Plan((left, top, left + side, top + side), (target, target))
    if mode == "squash":
        if size is None:
            oh, ow = max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)
        else:
            oh = ow = size
        return _Plan((0, 0, w, h), (oh, ow))
    # keep_aspect: longer side -> size; short_side: shorter side -> size (mmseg's keep-ratio
    # Resize); both sides rounded to a multiple of `multiple`
    scale = 1.0 if size is None else size / (min(w, h) if mode == "short_side" else max(w, h))
    oh = max(multiple, int(round(h * scale / multiple)) * multiple)
    ow = max(multiple, int(round(w * scale / multiple)) * multiple)
    return _Plan((0, 0, w, h), (oh, ow))


def preprocess(
    images: list[ImageInput],
    size: int | None = 512,
    mode: Literal["crop", "squash", "keep_aspect", "short_side"] = "crop",
    multiple: int = 8,
    min_side: int = 1,
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Crop and resize images to model input.

    Args:
        images: paths, PIL images, uint8/uint16/float arrays (H, W[, C]) or float tensors
            (3, H, W) in [0, 1].
        size: target side ("crop", "squash"), longer side ("keep_aspect") or shorter side
            ("short_side"); None keeps the
            image's own size (rounded down to `multiple`).
        mode: "crop" = square centre crop then resize (DiffSeg, DiffCut); "squash" = resize
            to size x size ignoring aspect; "keep_aspect" = scale the longer side to `size`;
            "short_side" = scale the shorter side to `size` (the open-vocabulary papers'
            sliding-window protocol); each side rounded to a multiple of `multiple`.
        multiple: the model's size granularity (VAE factor x UNet downsampling).
        min_side: the smallest input side accepted (pixels): an image smaller than the latent
            grid carries no information per token.

    Returns:
        A list of (3, h, w) float32 tensors in [0, 1] and one meta dict per image with
        `input_size` [H, W], `crop_box` [left, top, right, bottom] and `model_size` [h, w].

    Raises:
        ValueError: on an unknown `mode`, a non-positive or non-multiple `size`, or an image
            smaller than `min_side`.
    """
    check_resize_mode(mode)
    if size is not None and (size <= 0 or size % multiple):
        raise ValueError(f"`image_size` must be a positive multiple of {multiple}, got {size}.")
    tensors, metas = [], []
    for image in images:
        pil = as_pil(image)
        w, h = pil.size
        if min(w, h) < min_side:
            hint = ""
            if size is not None:
                fits = min(w, h) * size // min_side // multiple * multiple
                hint = (
                    f"; use `image_size` {fits} or smaller for this image"
                    if fits >= multiple
                    else "; the image is too small for this model"
                )
            raise ValueError(
                f"image of size {w}x{h} is smaller than the model's latent grid at `image_size` {size} "
                f"({min_side} px per side){hint}."
            )
        plan = _plan(w, h, size, mode, multiple)
        arr = np.asarray(pil.crop(plan.crop_box), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)  # (3, h, w)
        if tuple(x.shape[-2:]) != plan.out_size:
            # Bilinear with half-pixel centres and no antialiasing, as tf.image.resize (DiffSeg)
            # and torchvision's antialias=None (DiffCut) do.
            x = F.interpolate(x[None], size=plan.out_size, mode="bilinear", align_corners=False)[0]
        tensors.append(x.clamp_(0, 1))
        metas.append({"input_size": [h, w], "crop_box": list(plan.crop_box), "model_size": list(plan.out_size)})
    return tensors, metas


def stack_batch(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack preprocessed (3, h, w) images into one (B, 3, h, w) batch.

    Raises:
        ValueError: if the images do not share one model size (possible with "keep_aspect").
    """
    sizes = {tuple(t.shape[-2:]) for t in tensors}
    if len(sizes) > 1:
        raise ValueError(
            f"images of one batch must share a model size, got {sorted(sizes)}; "
            "segment them one at a time or use resize_mode 'crop' or 'squash'."
        )
    return torch.stack(tensors)
