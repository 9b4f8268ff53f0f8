"""Small label-map utilities shared by methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["argmax0", "maps_to_labels", "relabel_sequential", "class_scores", "mean_score_per_label"]


def argmax0(scores: torch.Tensor) -> torch.Tensor:
    """The index of the largest value along dim 0 (e.g. the winning class of (K, H, W) scores).

    Equal to ``scores.argmax(0)`` (the first index on ties, NaN counts as largest), computed
    with ``max(0)``: on CPU ``argmax`` over a leading dim is about 10x slower (torch 2.13; 2 ms
    against 0.2 ms for (4, 128, 128)).

    Returns:
        int64 tensor of `scores.shape[1:]`.
    """
    return scores.max(0).indices


def relabel_sequential(labels: torch.Tensor) -> torch.Tensor:
    """Map the occurring label ids to 0..K-1, keeping their order (same shape, int64)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).long()


def maps_to_labels(maps: torch.Tensor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """Upsample K score maps bilinearly to `size` and take the per-pixel argmax.

    DiffSeg's "non-maximum suppression" (google/diffseg `segmentor.py` l.139-143): bilinear
    upsampling (half-pixel centres) of the proposal maps, then argmax over proposals. Labels
    are renumbered 0..K'-1 over the proposals that win at least one pixel.

    Args:
        maps: (K, h, w) float scores.
        size: output (H, W).
        chunk: proposals upsampled at a time (bounds peak memory to chunk x H x W floats).

    Returns:
        int64 (H, W) labels in [0, K').
    """
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"`maps` must have shape (K, h, w) with K >= 1, got {tuple(maps.shape)}.")
    best = torch.full(size, -torch.inf, dtype=torch.float32, device=maps.device)
    labels = torch.zeros(size, dtype=torch.int64, device=maps.device)
    for start in range(0, maps.shape[0], chunk):
        part = F.interpolate(
            maps[None, start : start + chunk].float(), size=size, mode="bilinear", align_corners=False
        )[0]  # (k, H, W)
        value, index = part.max(0)
        better = value > best  # strict: ties keep the lower index, as argmax does
        best = torch.where(better, value, best)
        labels = torch.where(better, index + start, labels)
    return relabel_sequential(labels)


def class_scores(
    per_name: torch.Tensor,
    classes: list[int],
    num_classes: int,
    background: int | None = None,
    background_score: float = 0.0,
) -> torch.Tensor:
    """Per-class score maps from per-name maps: a class scores the maximum of its names (its
    synonyms); the `background` class, if any, a constant.

    Args:
        per_name: (P, H, W) float scores, one map per name.
        classes: the class index of each of the P names.
        num_classes: K.
        background: index of the class that gets the constant `background_score`, or None.

    Returns:
        (K, H, W) float32; a class with neither names nor the background role scores -inf.
    """
    if len(classes) != per_name.shape[0]:
        raise ValueError(f"`classes` names {len(classes)} classes for {per_name.shape[0]} maps.")
    out = torch.full((num_classes, *per_name.shape[-2:]), -torch.inf, device=per_name.device)
    if background is not None:
        out[background] = background_score
    for row, c in enumerate(classes):
        out[c] = torch.maximum(out[c], per_name[row].float())
    return out


def mean_score_per_label(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each class's mean score over the pixels labelled with it.

    Args:
        scores: (K, H, W) float score maps.
        labels: (H, W) int64 class indices in [0, K) (e.g. ``scores.argmax(0)``).

    Returns:
        (K,) float32 on the CPU; 0 for classes no pixel has.
    """
    out = torch.zeros(scores.shape[0])
    for c in labels.unique().tolist():
        out[c] = scores[c][labels == c].float().mean().cpu()
    return out
