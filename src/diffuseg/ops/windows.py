"""Sliding-window inference: the crop grid and the overlap-averaged stitching of crop scores.

The grid is mmsegmentation's ``EncoderDecoder.slide_inference`` (open-mmlab/mmsegmentation,
``mmseg/models/segmentors/encoder_decoder.py`` at 0067e6d8), which the training-free
open-vocabulary papers (SCLIP, ClearCLIP, ProxyCLIP) evaluate with: ``max(H - crop + stride - 1,
0) // stride + 1`` rows of windows, each starting at ``i * stride`` and shifted back so that it
ends inside the image (``y1 = min(y0 + crop, H); y0 = max(y1 - crop, 0)``), nothing padded; an
image smaller than the crop is one window of the image itself. Crop scores are summed into a
full-size buffer and divided by the number of windows covering each pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["plan_windows", "stitch"]


def _starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of each window along one axis of `length` pixels (mmseg's rule)."""
    grids = max(length - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(grids):
        end = min(i * stride + crop, length)
        out.append((max(end - crop, 0), end))
    return out


def plan_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The windows of a `height` x `width` canvas, row-major (top row first, left to right).

    Args:
        height, width: the canvas size in pixels (>= 1).
        crop: the window side in pixels (>= 1); a canvas side shorter than `crop` gives windows
            of that side's full length.
        stride: the step between window starts, 1 <= stride <= crop (no pixel left uncovered).

    Returns:
        (y0, y1, x0, x1) per window, half-open pixel ranges; together they cover every pixel.

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    for name, value in (("height", height), ("width", width), ("crop", crop), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if stride > crop:
        raise ValueError(f"`stride` must be at most `crop` ({crop}) so that windows leave no gap, got {stride}.")
    return [(y0, y1, x0, x1) for y0, y1 in _starts(height, crop, stride) for x0, x1 in _starts(width, crop, stride)]


def stitch(
    crops: Sequence[torch.Tensor], boxes: Sequence[tuple[int, int, int, int]], shape: tuple[int, int]
) -> torch.Tensor:
    """Average overlapping crop scores into one canvas (mmseg's ``preds / count_mat``).

    Sums run in float64, so the average of crops that agree at a pixel is exactly their value
    (a constant background score stays that constant; one window reproduces its crop exactly).

    Args:
        crops: per window, (K, y1 - y0, x1 - x0) float scores (-inf allowed: it stays -inf).
        boxes: per window, (y0, y1, x0, x1) inside `shape` (e.g. `plan_windows`).
        shape: (H, W) of the canvas.

    Returns:
        (K, H, W) scores in the first crop's dtype and device.

    Raises:
        ValueError: if the counts disagree, a crop does not fit its box, or a pixel is covered
            by no window.
    """
    if not crops or len(crops) != len(boxes):
        raise ValueError(f"`crops` ({len(crops)}) and `boxes` ({len(boxes)}) must be non-empty and of equal length.")
    h, w = shape
    first = crops[0]
    total = torch.zeros((first.shape[0], h, w), dtype=torch.float64, device=first.device)
    count = torch.zeros((h, w), dtype=torch.int64, device=first.device)
    for scores, (y0, y1, x0, x1) in zip(crops, boxes, strict=True):
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"`boxes`: window {(y0, y1, x0, x1)} is not inside the {h}x{w} canvas.")
        if tuple(scores.shape) != (first.shape[0], y1 - y0, x1 - x0):
            raise ValueError(
                f"`crops`: a crop of shape {tuple(scores.shape)} does not fit its window {(y0, y1, x0, x1)} "
                f"with {first.shape[0]} score maps."
            )
        total[:, y0:y1, x0:x1] += scores.to(device=total.device, dtype=torch.float64)
        count[y0:y1, x0:x1] += 1
    if bool((count == 0).any()):
        raise ValueError(f"`boxes` leave {int((count == 0).sum())} pixels of the {h}x{w} canvas uncovered.")
    return (total / count).to(first.dtype)
