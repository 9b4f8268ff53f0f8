"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), and DiffCut's use of it.

Re-implemented from the paper and the authors' code, https://github.com/visinf/1-stage-wseg
`models/mods/pamr.py`, as vendored by DiffCut (Couairon et al., NeurIPS 2024,
https://github.com/PaulCouairon/DiffCut at commit aa16df4, `tools/pamr.py` l.127-146),
without convolutions or hard-coded CUDA: neighbours are read from replicate-padded shifted
views, so the op runs on any device and in the dtype of its inputs.

For every pixel i and each of the 8 neighbours j at every dilation d, the image affinity is
``-|x_i - x_j| / (1e-8 + 0.1 * std_i)`` (std over the 3x3 window of every dilation, centre
included once per dilation, per channel), averaged over channels and softmax-normalised over
the 8 * len(dilations) neighbours. The mask is then replaced `num_iter` times by the
affinity-weighted sum of its neighbours' values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .masks import argmax0
from .median import median_filter

__all__ = ["PamrAffinity", "pamr", "pamr_affinity", "propagate", "refine_labels"]

# Neighbour offsets (dy, dx) in the order of the reference's 3x3 shift kernels.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_WINDOW = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dil = tuple(int(d) for d in dilations)
    if not dil or any(d < 1 for d in dil):
        raise ValueError(f"`dilations` must be a non-empty sequence of ints >= 1, got {dilations}.")
    return dil


@dataclass(frozen=True)
class PamrAffinity:
    """PAMR's image affinity: what `propagate` weights each neighbour by.

    Attributes:
        weights: (B, 1, P, H, W) softmax-normalised over the P = 8 * len(dilations) neighbours.
        offsets: the P neighbour offsets (dy, dx), in the order of `weights`.
    """

    weights: torch.Tensor
    offsets: tuple[tuple[int, int], ...]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8)) -> PamrAffinity:
    """The local image affinity of every pixel to its neighbours (see the module docstring).

    It depends on the image alone, so refining several label maps of one image (e.g. a web
    page re-segmenting with other settings) can compute it once.

    Args:
        image: float tensor (B, C, H, W), e.g. RGB in [0, 1].
        dilations: neighbourhood dilations, ints >= 1 (DiffCut eval: 1, 2, 4, 8).

    Raises:
        ValueError: on an image that is not 4-D or bad `dilations`.
    """
    if image.ndim != 4:
        raise ValueError(f"`image` must be (B, C, H, W), got {tuple(image.shape)}.")
    dil = _check_dilations(dilations)
    x = image if image.is_floating_point() else image.float()
    # (B, 1, P, H, W), built view by view so the peak memory is the P affinity planes, not
    # C * P difference planes.
    r = max(dil)
    h, w = x.shape[-2:]
    padded = F.pad(x, [r, r, r, r], mode="replicate")  # (B, C, H+2r, W+2r)

    def view(oy: int, ox: int) -> torch.Tensor:
        return padded[:, :, r + oy : r + oy + h, r + ox : r + ox + w]  # (B, C, H, W)

    window = [(dy * d, dx * d) for d in dil for dy, dx in _WINDOW]  # centre once per dilation
    mean = sum(view(oy, ox) for oy, ox in window) / len(window)
    var = sum((view(oy, ox) - mean) ** 2 for oy, ox in window) / (len(window) - 1)
    scale = 1e-8 + 0.1 * var.sqrt()  # (B, C, H, W); unbiased std like torch.std
    offsets = tuple((dy * d, dx * d) for d in dil for dy, dx in _NEIGHBOURS)
    aff = torch.stack(
        [(-(x - view(oy, ox)).abs() / scale).mean(dim=1, keepdim=True) for oy, ox in offsets], dim=2
    )  # (B, 1, P, H, W)
    return PamrAffinity(F.softmax(aff, dim=2), offsets)


def propagate(masks: torch.Tensor, affinity: PamrAffinity, num_iter: int = 10) -> torch.Tensor:
    """Replace `masks` `num_iter` times by the affinity-weighted sum of their neighbours.

    Args:
        masks: float tensor (B, K, H, W) on the affinity's grid, device and dtype.
        affinity: `pamr_affinity` of the image.
        num_iter: propagation steps, >= 0.

    Returns:
        tensor (B, K, H, W).
    """
    if num_iter < 0:
        raise ValueError(f"`num_iter` must be >= 0, got {num_iter}.")
    weights = affinity.weights
    if masks.ndim != 4 or masks.shape[0] != weights.shape[0] or masks.shape[-2:] != weights.shape[-2:]:
        raise ValueError(
            f"`masks` must be (B, K, H, W) on the affinity's {weights.shape[0]} x {tuple(weights.shape[-2:])} "
            f"grid, got {tuple(masks.shape)}."
        )
    # One replicate pad by the largest offset per step, then each neighbour is a view of it;
    # accumulating view by view keeps memory at two mask-sized buffers.
    r = max(max(abs(oy), abs(ox)) for oy, ox in affinity.offsets)
    h, w = masks.shape[-2:]
    planes = [weights[:, :, p] for p in range(weights.shape[2])]  # P tensors (B, 1, H, W)
    for _ in range(num_iter):
        padded_masks = F.pad(masks, [r, r, r, r], mode="replicate")  # (B, K, H+2r, W+2r)
        out = torch.zeros_like(masks)
        for (oy, ox), weight in zip(affinity.offsets, planes, strict=True):
            out.addcmul_(padded_masks[:, :, r + oy : r + oy + h, r + ox : r + ox + w], weight)
        masks = out
    return masks


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    num_iter: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8),
    *,
    affinity: PamrAffinity | None = None,
) -> torch.Tensor:
    """Refine soft masks by propagating them along local image affinities
    (`pamr_affinity`, then `propagate`).

    Args:
        image: float tensor (B, 3, H, W) (any channel count), e.g. RGB in [0, 1].
        masks: float tensor (B, K, h, w), e.g. one-hot labels; resized bilinearly
            (align_corners=True, as the reference) to (H, W) if needed.
        num_iter: propagation steps, >= 0 (DiffCut eval: 10; demo notebook: 30).
        dilations: neighbourhood dilations (DiffCut eval: 1, 2, 4, 8).
        affinity: `pamr_affinity(image, dilations)` if already computed, else None.

    Returns:
        tensor (B, K, H, W) in the dtype of `masks` (floating) on the image's device.

    Raises:
        ValueError: on bad shapes, `num_iter` < 0 or bad `dilations`.
    """
    if image.ndim != 4 or masks.ndim != 4 or image.shape[0] != masks.shape[0]:
        raise ValueError(
            f"`image` (B, C, H, W) and `masks` (B, K, h, w) must be 4-D with equal B, got "
            f"{tuple(image.shape)} and {tuple(masks.shape)}."
        )
    if num_iter < 0:
        raise ValueError(f"`num_iter` must be >= 0, got {num_iter}.")
    _check_dilations(dilations)
    dtype = masks.dtype if masks.is_floating_point() else image.dtype
    if not torch.empty((), dtype=dtype).is_floating_point():
        dtype = torch.float32
    masks = masks.to(device=image.device, dtype=dtype)
    x = image.to(dtype)
    if masks.shape[-2:] != x.shape[-2:]:
        masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=True)
    return propagate(masks, affinity if affinity is not None else pamr_affinity(x, dilations), num_iter)


def refine_labels(
    image: torch.Tensor,
    labels: torch.Tensor,
    num_iter: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8),
    median_size: int = 3,
    *,
    affinity: PamrAffinity | None = None,
) -> torch.Tensor:
    """DiffCut's refinement: one-hot labels -> PAMR -> argmax -> median filter.

    Reference: `eval_diffcut.py::pamr` (l.90-95): masks are the one-hot of the occurring
    labels, refined with `PAMR(10, [1, 2, 4, 8])`, argmaxed and passed through
    `scipy.ndimage.median_filter(labels, 3)`. Like the reference, the median is taken over
    label *ids*: where three or more segments meet, it can return an id that is not the
    majority of the window (a pixel or two at junctions); kept for fidelity.

    Args:
        image: float tensor (3, H, W), RGB in [0, 1].
        labels: int tensor (H, W) (or any (h, w), resized bilinearly as soft masks).
        num_iter: PAMR iterations.
        dilations: PAMR dilations.
        median_size: odd median window side; 1 (or 0) disables the filter.
        affinity: `pamr_affinity(image[None], dilations)` if already computed, else None.

    Returns:
        int64 tensor (H, W) with values in [0, K'), relabelled to consecutive ids
        in order of the input label ids.
    """
    if image.ndim != 3 or labels.ndim != 2:
        raise ValueError(
            f"`image` must be (3, H, W) and `labels` (h, w), got {tuple(image.shape)} and {tuple(labels.shape)}."
        )
    _, ids = torch.unique(labels.reshape(-1), return_inverse=True)
    ids = ids.reshape(labels.shape).to(image.device)
    num = int(ids.max()) + 1
    dtype = image.dtype if image.is_floating_point() else torch.float32
    one_hot = F.one_hot(ids, num_classes=num).permute(2, 0, 1)[None].to(dtype)  # (1, K, h, w)
    refined = pamr(image[None].to(dtype), one_hot, num_iter=num_iter, dilations=dilations, affinity=affinity)
    out = argmax0(refined[0])  # (H, W)
    if median_size > 1:
        out = median_filter(out, median_size)
    _, dense = torch.unique(out, return_inverse=True)
    return dense.reshape(out.shape).long()
