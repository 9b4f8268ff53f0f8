"""What a UNet is trained to predict, for a scheduler's prediction type (shared by the
Seg-diffusion objective and the diffusion class filter)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["prediction_target"]


def prediction_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict for `scheduler`'s ``prediction_type``.

    Raises:
        ValueError: for a prediction type other than "epsilon" or "v_prediction".
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"the base scheduler's prediction type {kind!r} is not supported; use epsilon or v_prediction.")
