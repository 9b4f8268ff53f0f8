"""Class maps from cross-attention: DiffSegmenter's weighted multi-resolution scores.

`diffsegmenter_scores` is the core of DiffSegmenter (arXiv 2309.02773), written as a pure
function of head- and layer-averaged attention so that it can be checked against the published
code (VCG-team/DiffSegmenter ``open_vocabulary/voc10/ptp_stable_voc10.py`` l.494-517) on
identical inputs: each resolution's class map is bilinearly upsampled to the finest grid,
min-max normalised, weighted and summed; the sum is then propagated along the finest
self-attention rows (``A_self @ c``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["diffsegmenter_scores", "minmax", "span_maps"]


def minmax(x: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Min-max normalise each map over its last `dims` axes to [0, 1] (a constant map -> 0)."""
    flat = x.flatten(-dims)
    lo = flat.amin(-1, keepdim=True)
    hi = flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(torch.finfo(flat.dtype).tiny)).reshape(x.shape)


def _grid(key: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), int(key)


def span_maps(cross: torch.Tensor, grid: tuple[int, int], spans: list[list[int]]) -> torch.Tensor:
    """Each span's cross-attention map: the mean over its token positions.

    Args:
        cross: (N, T) float attention of N = h*w image tokens over T text tokens.
        grid: (h, w) of the image tokens.
        spans: per class, the token positions to average (non-empty).

    Returns:
        (K, h, w) float32, one map per span.
    """
    h, w = grid
    return torch.stack([cross[:, pos].float().mean(-1).reshape(h, w) for pos in spans])


def diffsegmenter_scores(
    cross: Mapping[int | tuple[int, int], torch.Tensor],
    self_attention: torch.Tensor,
    weights: Mapping[int | tuple[int, int], float],
    iterations: int = 1,
    *,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """DiffSegmenter's refined class scores, before the final upsampling.

    For every resolution s: ``c += weights[s] * minmax(upsample_bilinear(cross[s], R))``
    (the reference upsamples to 64x64 first, then min-max normalises each map, l.507-512);
    then ``iterations`` times ``c <- A_self @ c`` along the finest self-attention (l.513-514).

    Args:
        cross: side s -> (K, s, s) class maps (head- and layer-averaged cross-attention of
            each class's tokens). Keys may also be (h, w) grids for non-square inputs.
        self_attention: (R*R, R*R) head- and layer-averaged self-attention at the finest side
            R (rows sum to 1), or (h*w, h*w) with `grid`.
        weights: side (or grid) -> weight, one per key of `cross`.
        iterations: how many times the scores are propagated; 0 = no refinement.
        grid: (h, w) of the finest grid when it is not square; default (R, R).

    Returns:
        (K, R, R) float32 scores (or (K, h, w)). Not normalised: the caller upsamples and
        min-max normalises each class.

    Raises:
        ValueError: on empty `cross`, a side without a weight, a non-square `self_attention`
            that does not match `grid`, or a negative `iterations`.
    """
    if not cross:
        raise ValueError("`cross` is empty; give at least one resolution's class maps.")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"`iterations` must be an int >= 0, got {iterations!r}.")
    n = self_attention.shape[-1]
    if self_attention.ndim != 2 or self_attention.shape[0] != n:
        raise ValueError(f"`self_attention` must be a square (N, N) matrix, got {tuple(self_attention.shape)}.")
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"`self_attention` has {n} tokens, not a square grid; pass `grid=(h, w)`.")
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"`grid` {grid} does not hold the {n} tokens of `self_attention`.")
    missing = [k for k in cross if k not in weights]
    if missing:
        raise ValueError(f"`weights` has no weight for the resolution(s) {missing}; it has {sorted(weights)}.")
    total = None
    for key, maps in cross.items():
        h, w = _grid(key)
        if maps.ndim != 3 or tuple(maps.shape[-2:]) != (h, w):
            raise ValueError(f"`cross[{key!r}]` must be (K, {h}, {w}), got {tuple(maps.shape)}.")
        up = F.interpolate(maps[:, None].float(), size=grid, mode="bilinear", align_corners=False)[:, 0]
        term = float(weights[key]) * minmax(up)
        total = term if total is None else total + term
    c = total.flatten(1)  # (K, N)
    a = self_attention.to(c.dtype)
    for _ in range(iterations):
        c = c @ a.T  # (A @ c^T)^T: each pixel gathers the scores of the pixels it attends to
    return c.reshape(-1, *grid)
