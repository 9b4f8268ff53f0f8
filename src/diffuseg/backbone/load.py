"""`load_backbone`: a ready `DiffusionBackbone` from plain arguments (model, config, device,
dtype), the one way the CLI, the batch engine's workers, the eval runner and the demo load it.
`DTYPES` / `parse_dtype` are `diffuseg.dtypes`'s, re-exported."""

from __future__ import annotations

import torch

from ..dtypes import DTYPES, parse_dtype
from .backbone import DiffusionBackbone
from .loading import DEFAULT_MODEL

__all__ = ["DTYPES", "parse_dtype", "load_backbone"]


def load_backbone(
    model: str | None = None,
    *,
    config: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> DiffusionBackbone:
    """Load a diffusion model and move it to `device` / `dtype`.

    Args:
        model: hub id (the local cache first), diffusers folder, ``.safetensors`` / ``.ckpt``
            file, or ``"toy"``; None = `DEFAULT_MODEL`.
        config: for single-file checkpoints, a diffusers folder or hub id with the matching
            component configs.
        device: torch device of the model.
        dtype: weight dtype (`parse_dtype`); None = float32.

    Raises:
        ValueError: a bad `dtype`; `NotADiffusionModelError` for a path that holds no model.
        OSError: `ModelNotFoundError`, a model that cannot be found.
    """
    torch_dtype = parse_dtype(dtype)
    backbone = DiffusionBackbone.from_pretrained(model or DEFAULT_MODEL, torch_dtype=torch_dtype, config=config)
    return backbone.to(device, torch_dtype)
