"""`load_backbone`: a ready `DiffusionBackbone` from plain arguments (model, config, device,
dtype), the one way the CLI, the batch engine's workers, the eval runner and the demo load it."""

from __future__ import annotations

import torch

from .backbone import DiffusionBackbone
from .loading import DEFAULT_MODEL

__all__ = ["DTYPES", "parse_dtype", "load_backbone"]

#: Names of the weight dtypes the loaders accept -> torch dtype attribute.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A weight dtype: a name of `DTYPES` or a torch dtype (None -> None: the weights' own).

    Raises:
        ValueError: naming `dtype`, for a name that is not in `DTYPES`.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
    return getattr(torch, DTYPES[dtype])


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
