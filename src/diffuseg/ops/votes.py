"""Name the segments of an unsupervised segmentation from per-class score maps.

DiffSeg's semantic labels (google/diffseg ``get_semantics``, utils.py l.157-177): each noun's
cross-attention map is L2-normalised over the pixels, and each segment takes the noun that wins
its vote. Two votes:

* ``mean``: the mean of each normalised map over the segment's pixels, then the argmax (the
  reference's default);
* ``majority``: the per-pixel argmax, then the most frequent class in the segment. The
  reference's "majority" takes the *median* of the per-pixel class indices, which depends on
  the order of the class list; diffuseg counts votes (a true majority; ties go to the lower index).

Segments that get the same name merge.
"""

from __future__ import annotations

import torch

from ..settings import VOTINGS
from .masks import argmax0

__all__ = ["VOTINGS", "segment_votes", "name_segments", "cross_attention_maps"]

#: How a segment chooses its class.


def segment_votes(labels: torch.Tensor, class_maps: torch.Tensor, voting: str = "mean") -> torch.Tensor:
    """Each segment's score for each class.

    Args:
        labels: (H, W) int64 segment ids in [0, S).
        class_maps: (K, H, W) float, one non-negative score map per class.
        voting: one of `VOTINGS`.

    Returns:
        (S, K) float32: the mean normalised map ("mean") or the share of pixels won ("majority")
        of each class in each segment; rows of absent segment ids are 0.

    Raises:
        ValueError: for a bad `voting`, or shapes that do not match.
    """
    if voting not in VOTINGS:
        raise ValueError(f"`voting` must be one of {VOTINGS}, got {voting!r}.")
    if class_maps.ndim != 3 or labels.shape != class_maps.shape[1:]:
        raise ValueError(
            f"`labels` (H, W) and `class_maps` (K, H, W) must share H, W; got {tuple(labels.shape)} and "
            f"{tuple(class_maps.shape)}."
        )
    k = class_maps.shape[0]
    flat = labels.reshape(-1).long()
    s = int(flat.max()) + 1 if flat.numel() else 0
    maps = class_maps.reshape(k, -1).float()
    if voting == "mean":
        maps = maps / maps.norm(dim=1, keepdim=True).clamp_min(1e-12)
        values = maps.t()  # (P, K)
    else:
        values = torch.nn.functional.one_hot(argmax0(maps), k).float()  # (P, K)
    sums = torch.zeros(s, k).index_add_(0, flat, values)
    counts = torch.bincount(flat, minlength=s).clamp_min(1).unsqueeze(1).float()
    return sums / counts


def name_segments(labels: torch.Tensor, class_maps: torch.Tensor, voting: str = "mean") -> torch.Tensor:
    """The label map with each segment replaced by the class it votes for (merging segments
    that share a class).

    Args:
        labels: (H, W) int64 segment ids in [0, S).
        class_maps: (K, H, W) float score maps (see `segment_votes`).

    Returns:
        (H, W) int64 class indices in [0, K).
    """
    votes = segment_votes(labels, class_maps, voting)
    return votes.argmax(1)[labels.long()]


def cross_attention_maps(
    cross: dict[tuple[int, int], torch.Tensor], spans: list[list[int]], size: tuple[int, int]
) -> torch.Tensor:
    """Each token span's cross-attention at `size`: summed over the span's tokens, bilinearly
    upsampled from every resolution, averaged over resolutions.

    Args:
        cross: (h, w) -> (N, T) attention of one image (`Features.by_resolution("cross")` row).
        spans: per name, its token positions (non-empty).
        size: (H, W) output size.

    Returns:
        (P, H, W) float32, one map per span.
    """
    out = torch.zeros((len(spans), *size))
    for (h, w), attn in cross.items():
        maps = torch.stack([attn[:, pos].float().sum(-1).reshape(h, w) for pos in spans]).cpu()
        out += torch.nn.functional.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return out / max(len(cross), 1)
