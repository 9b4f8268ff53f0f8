"""A median filter on tensors (any device, no scipy); `diffuseg.ops.pamr.refine_labels` smooths labels with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["median_filter"]


def median_filter(image: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Median over a `size` x `size` window, like `scipy.ndimage.median_filter(image, size)`.

    Borders follow scipy's default ``mode="reflect"`` (half-sample symmetric: the edge pixel
    is repeated first). For a label map of shape (1, H, W), as DiffCut passes it, scipy's 3-D
    window sees the same plane three times, which gives the same result as this 2-D filter.

    Args:
        image: tensor (H, W) of any real dtype (e.g. int64 labels).
        size: odd window side >= 1.

    Returns:
        tensor (H, W) of the same dtype and device.

    Raises:
        ValueError: on an even or non-positive `size`, or a tensor that is not 2-D.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"`size` must be an odd int >= 1, got {size}.")
    if image.ndim != 2:
        raise ValueError(f"`image` must be 2-D (H, W), got shape {tuple(image.shape)}.")
    if size == 1 or image.numel() == 0:
        return image.clone()
    r = size // 2
    h, w = image.shape
    x = image[None, None].double()  # (1, 1, H, W); float64 holds int labels exactly
    # Half-sample symmetric padding: index -1 -> 0, -2 -> 1, ... (torch "reflect" skips the edge).
    rows = _symmetric_index(h, r, image.device)
    cols = _symmetric_index(w, r, image.device)
    x = x[:, :, rows][:, :, :, cols]  # (1, 1, H+2r, W+2r)
    patches = F.unfold(x, kernel_size=size)  # (1, size*size, H*W)
    med = patches.median(dim=1).values.reshape(h, w)
    return med.to(image.dtype)


def _symmetric_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices 0..n-1 extended by r on each side with half-sample symmetric reflection."""
    idx = torch.arange(-r, n + r, device=device)
    period = 2 * n
    idx = idx % period
    return torch.where(idx >= n, period - 1 - idx, idx)
