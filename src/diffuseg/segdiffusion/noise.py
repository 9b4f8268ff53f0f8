"""Multi-resolution ("pyramid") noise for training: Gaussian noise plus coarser Gaussian noise
upsampled and discounted, as Seg-diffusion's training (``image_util.py`` l.44-52; ``train.sh``:
6 levels, discount 0.3; each level's scale r drawn in [2, 4)), after Whitaker's "multi-resolution
noise". Unlike the reference, every draw comes from the caller's generator, and the result is
rescaled to unit standard deviation so the scheduler's noise level is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pyramid_noise"]


def pyramid_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    levels: int = 6,
    discount: float = 0.3,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise of `shape` (B, C, H, W): N(0, 1) plus, for i = 1..levels, N(0, 1) noise at a grid
    r^i times coarser (r ~ U[2, 4) per level) upsampled bilinearly and weighted by discount^i;
    levels stop once the grid would be a single cell. Normalised to unit std per sample.

    Args:
        shape: (B, C, H, W).
        generator: randomness (on `device`, or CPU: draws are moved).
        levels: number of coarser levels (0 = plain Gaussian noise).
        discount: weight factor per level, in [0, 1).

    Returns:
        float32 tensor of `shape` on `device` (default: the generator's).
    """
    if len(shape) != 4:
        raise ValueError(f"`shape` must be (B, C, H, W), got {shape!r}.")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f"`levels` must be an int >= 0, got {levels!r}.")
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"`discount` must be in [0, 1), got {discount!r}.")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    b, c, h, w = shape
    noise = torch.randn(shape, generator=generator, device=gen_device)
    for i in range(1, levels + 1):
        r = 2.0 + 2.0 * float(torch.rand((), generator=generator, device=gen_device))
        hh, ww = max(1, int(h / r**i)), max(1, int(w / r**i))
        if hh == 1 and ww == 1:
            break
        coarse = torch.randn((b, c, hh, ww), generator=generator, device=gen_device)
        noise = noise + discount**i * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    noise = noise / noise.flatten(1).std(dim=1).view(b, 1, 1, 1)
    return noise.to(device) if device is not None else noise
