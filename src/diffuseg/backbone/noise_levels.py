"""One timestep, one noise level: a method's timestep t is Stable Diffusion's DDPM timestep on
every family (docs/backbone_seam.md §3.3).

A flow-matching model (SD3, SD3.5, FLUX) noises a latent as ``(1 - sigma) x + sigma eps``; SD's
DDPM as ``sqrt(abar_t) x + sqrt(1 - abar_t) eps``. Both have the same signal-to-noise ratio when

    sigma(t) = sqrt(1 - abar_t) / (sqrt(abar_t) + sqrt(1 - abar_t))

(the DDPM sample divided by ``sqrt(abar_t) + sqrt(1 - abar_t)`` *is* the flow sample), with abar
from SD's scaled-linear betas (0.00085 ... 0.012 over 1000 steps). So t = 300, DiffSeg's
timestep, is sigma 0.454 on SD3, not 0.3: the same amount of noise as on SD 1.5. Values:
t = 0 -> 0.028, 100 -> 0.256, 300 -> 0.454, 500 -> 0.618, 999 -> 0.936.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["SD_BETAS", "sd_alphas_cumprod", "flow_sigma", "sd_timestep"]

#: Stable Diffusion's scaled-linear beta range (its scheduler configs: beta_start, beta_end).
SD_BETAS = (0.00085, 0.012)
_STEPS = 1000


@functools.lru_cache(maxsize=1)
def sd_alphas_cumprod() -> torch.Tensor:
    """SD's abar_t for t in [0, 1000): (1000,) float64, decreasing from 0.99915 to 0.0047."""
    betas = torch.linspace(SD_BETAS[0] ** 0.5, SD_BETAS[1] ** 0.5, _STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def flow_sigma(timestep: int) -> float:
    """The flow-matching sigma with the signal-to-noise ratio of SD's timestep `timestep`.

    Raises:
        ValueError: naming `timestep` outside [0, 1000).
    """
    if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < _STEPS:
        raise ValueError(f"`timestep` must be an int in [0, {_STEPS}), got {timestep!r}.")
    abar = float(sd_alphas_cumprod()[timestep])
    signal, noise = abar**0.5, (1.0 - abar) ** 0.5
    return noise / (signal + noise)


def sd_timestep(sigma: float) -> int:
    """The SD timestep whose `flow_sigma` is nearest `sigma` (e.g. a paper's SD3 timestep
    ``1000 * sigma`` read on the shared scale).

    Raises:
        ValueError: naming `sigma` outside [0, 1].
    """
    if not 0.0 <= sigma <= 1.0:
        raise ValueError(f"`sigma` must be in [0, 1], got {sigma!r}.")
    sigmas = torch.tensor([flow_sigma(t) for t in range(_STEPS)], dtype=torch.float64)
    return int((sigmas - sigma).abs().argmin())
