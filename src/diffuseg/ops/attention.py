"""Attention-map aggregation across resolutions (DiffSeg, Tian et al. CVPR 2024, §3.1)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["aggregate_self_attention", "resolution_weights"]

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resolution_weights(sizes: list[tuple[int, int]]) -> list[float]:
    """Weights proportional to the side length of each token grid, summing to 1.

    google/diffseg `segmentor.py::get_weight_rato` (l.32-38): sqrt(tokens) / sum; for SD-1.x
    grids 64, 32, 16, 8 this gives [0.533, 0.267, 0.133, 0.067].
    """
    sides = [math.sqrt(h * w) for h, w in sizes]
    total = sum(sides)
    return [s / total for s in sides]


def aggregate_self_attention(
    maps: Mapping[Size, torch.Tensor], weights: Mapping[Size, float] | None = None
) -> torch.Tensor:
    """Aggregate head-averaged self-attention maps of several resolutions into one 4-D tensor.

    As google/diffseg `segmentor.py::aggregate_weights` (l.40-64): for each resolution the key
    axes are upsampled bilinearly (half-pixel centres, as Keras `UpSampling2D`) to the highest
    resolution and each key map is renormalised to sum to 1; the query axes are tiled
    (nearest neighbour); resolutions are summed with weights proportional to side length.

    Args:
        maps: resolution -> (s*s, s*s) attention probabilities of one image (rows sum to 1),
            keyed by side `s` or by (h, w) for non-square grids. A leading batch axis of 1 is
            accepted.
        weights: optional resolution -> weight (default: proportional to side length).

    Returns:
        float32 tensor (R*R, R, R) for the largest grid R (or (H*W, H, W) for (H, W) grids):
        entry [i] is the aggregated attention map of query token i, summing to 1.

    Raises:
        ValueError: if `maps` is empty or a map's shape does not match its key.
    """
    if not maps:
        raise ValueError("`maps` is empty: record self-attention first.")
    items = []
    for key, value in maps.items():
        h, w = _hw(key)
        m = value[0] if value.ndim == 3 and value.shape[0] == 1 else value
        if m.shape != (h * w, h * w):
            raise ValueError(f"map for resolution {key} must have shape ({h * w}, {h * w}), got {tuple(value.shape)}.")
        items.append(((h, w), m))
    items.sort(key=lambda kv: kv[0][0] * kv[0][1], reverse=True)
    big_h, big_w = items[0][0]
    sizes = [s for s, _ in items]
    ws = resolution_weights(sizes) if weights is None else [float(weights[_key(maps, s)]) for s in sizes]
    hw = big_h * big_w
    out = torch.zeros(hw, hw, dtype=torch.float32, device=items[0][1].device)  # (queries, key pixels)
    for ((h, w), m), weight in zip(items, ws, strict=True):
        keys = m.float().reshape(h * w, 1, h, w)  # one key map per query token
        if (h, w) != (big_h, big_w):
            keys = F.interpolate(keys, size=(big_h, big_w), mode="bilinear", align_corners=False)
        keys = keys.reshape(h * w, hw)
        # renormalise each key map to sum 1, folded with the resolution weight into one scale
        scale = weight / keys.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (h*w, 1)
        if (h, w) == (big_h, big_w):
            out.addcmul_(keys, scale)
        elif big_h % h == 0 and big_w % w == 0:
            # tile the query axes (nearest neighbour) by broadcasting into a view: no copy
            fy, fx = big_h // h, big_w // w
            out.view(h, fy, w, fx, hw).addcmul_(keys.view(h, 1, w, 1, hw), scale.view(h, 1, w, 1, 1))
        else:  # non-integer factor: nearest (floor) query index, as F.interpolate(mode="nearest")
            iy = torch.arange(big_h, device=out.device) * h // big_h
            ix = torch.arange(big_w, device=out.device) * w // big_w
            idx = (iy[:, None] * w + ix[None, :]).reshape(-1)
            out.addcmul_(keys[idx], scale[idx])
    return out.reshape(big_h * big_w, big_h, big_w)


def _key(maps: Mapping[Size, torch.Tensor], size: tuple[int, int]) -> Size:
    for k in maps:
        if _hw(k) == size:
            return k
    raise KeyError(size)
