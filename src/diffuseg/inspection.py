"""What a method "sees" from one pixel, drawn next to the image (DiffCut's semantic-coherence
view, `semantic_coherence.ipynb` in PaulCouairon/DiffCut):

* ``diffcut``: cosine similarity between the query token's feature and every other token's
  (the `attn1` output DiffCut cuts), in [-1, 1];
* ``diffseg``: the query pixel's aggregated self-attention map (all resolutions, weights
  proportional to side length, `diffuseg.ops.attention.aggregate_self_attention`).

`view_picture` draws the picture from recorded features (`Segmenter.features`); ``diffuseg
inspect`` and the demo's pixel view both draw it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["METHODS", "view_picture", "feature_similarity", "attention_map", "query_map", "render", "colorize"]

#: The methods whose view can be drawn.
METHODS = ("diffcut", "diffseg")

# Colour stops of a perceptually ordered dark-blue -> teal -> yellow map (viridis-like).
_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def feature_similarity(features: torch.Tensor, token: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of token (i, j) with every token.

    Args:
        features: float tensor (C, h, w).
        token: (row, column) on the (h, w) grid.

    Returns:
        float32 tensor (h, w) in [-1, 1].
    """
    feats = F.normalize(features.float(), dim=0)  # (C, h, w)
    i, j = token
    return torch.einsum("chw,c->hw", feats, feats[:, i, j])


def attention_map(maps: dict[tuple[int, int], torch.Tensor], point: tuple[float, float]) -> torch.Tensor:
    """Aggregated self-attention map of the query at relative position `point`.

    Args:
        maps: resolution (h, w) -> (1, N, N) or (N, N) head-averaged self-attention.
        point: (y, x) in [0, 1) relative to the model input.

    Returns:
        float32 tensor (R, R') over the largest grid, summing to 1.
    """
    from .ops.attention import aggregate_self_attention

    agg = aggregate_self_attention(maps)  # (R*R', R, R')
    r, r2 = agg.shape[-2:]
    i, j = min(int(point[0] * r), r - 1), min(int(point[1] * r2), r2 - 1)
    return agg[i * r2 + j]


def query_map(features: Any, method: str, point: tuple[float, float]) -> torch.Tensor:
    """The map to draw for image 0 of `features` and the relative query point (y, x) in [0, 1).

    Raises:
        ValueError: on an unknown method or features missing what it needs.
    """
    if method == "diffcut":
        from .methods.diffcut import token_features

        feats = token_features(features, 0)  # (C, h, w)
        h, w = feats.shape[-2:]
        token = (min(int(point[0] * h), h - 1), min(int(point[1] * w), w - 1))
        return feature_similarity(feats, token)
    if method == "diffseg":
        maps = {size: m[0] for size, m in features.by_resolution("self").items()}
        if not maps:
            raise ValueError("these features hold no self-attention maps.")
        return attention_map(maps, point)
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8."""
    pos = np.clip(values, 0, 1) * (len(_STOPS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_STOPS) - 2)
    frac = (pos - lo)[..., None]
    return (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).round().astype(np.uint8)


def render(
    image: Image.Image, values: torch.Tensor, point: tuple[float, float], value_range: tuple[float, float] | None = None
) -> Image.Image:
    """The image with the query marked, and the map (bilinearly resized) next to it.

    Args:
        image: RGB model view (the crop the model saw).
        values: (h, w) map.
        point: (y, x) in [0, 1) relative to `image`.
        value_range: (low, high) mapped to the ends of the colour map; default the map's range.
    """
    w, h = image.size
    up = F.interpolate(values[None, None].float().cpu(), size=(h, w), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()
    lo, hi = value_range if value_range is not None else (float(values.min()), float(values.max()))
    heat = Image.fromarray(colorize((up - lo) / max(hi - lo, 1e-12)))
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(image.convert("RGB"), (0, 0))
    canvas.paste(Image.blend(image.convert("RGB"), heat, 0.75), (w, 0))
    draw = ImageDraw.Draw(canvas)
    y, x = point[0] * h, point[1] * w
    r = max(3, min(w, h) // 60)
    for dx in (0, w):
        draw.ellipse([x + dx - r, y - r, x + dx + r, y + r], outline=(255, 0, 0), width=max(1, r // 2))
    return canvas


def view_picture(image: Image.Image, features: Any, method: str, point: tuple[int, int]) -> Image.Image:
    """`render` of `method`'s map for the pixel `point` = (y, x) of `image` (as given), from
    `features` recorded for it (`Segmenter.features`; its ``meta[0]["crop_box"]`` places the
    model input on the image).

    Raises:
        ValueError: a point outside the model's view, or features without what `method` needs.
    """
    left, top, right, bottom = features.meta[0]["crop_box"]
    y, x = point
    if not (top <= y < bottom and left <= x < right):
        raise ValueError(f"the point {y},{x} lies outside the part of the image the model saw.")
    rel = ((y - top) / (bottom - top), (x - left) / (right - left))
    values = query_map(features, method, rel)
    model_h, model_w = features.images.shape[-2:]
    view = image.crop((left, top, right, bottom)).resize((model_w, model_h), Image.BILINEAR)
    return render(view, values, rel, (-1.0, 1.0) if method == "diffcut" else None)
