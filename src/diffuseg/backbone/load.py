"""`load_backbone`: a ready `DiffusionBackbone` from plain arguments (model, config, device,
dtype), the one way the CLI, the batch engine's workers, the eval runner and the demo load it.
`DTYPES` / `parse_dtype` are `diffuseg.dtypes`'s, re-exported."""

from __future__ import annotations

import torch

from ..dtypes import DTYPES, parse_dtype
from .backbone import DiffusionBackbone
from .loading import DEFAULT_MODEL, resolve_model
from .mmdit import MMDIT_FAMILIES, MMDiTBackbone, pipeline_class

__all__ = ["DTYPES", "parse_dtype", "load_backbone"]


def load_backbone(
    model: str | None = None,
    *,
    config: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    drop_t5: bool = False,
) -> DiffusionBackbone | MMDiTBackbone:
    """Load a diffusion model and move it to `device` / `dtype`.

    Args:
        model: hub id (the local cache first), diffusers folder, ``.safetensors`` / ``.ckpt``
            file, or ``"toy"``; None = `DEFAULT_MODEL`. A pipeline folder of a diffusion
            transformer (SD3, SD3.5, FLUX: `MMDIT_FAMILIES`) gives an `MMDiTBackbone`.
        config: for single-file checkpoints, a diffusers folder or hub id with the matching
            component configs.
        device: torch device of the model.
        dtype: weight dtype (`parse_dtype`); None = float32.
        drop_t5: SD3 / SD3.5: leave the T5 text encoder out (`MMDiTBackbone.from_pretrained`).

    Raises:
        ValueError: a bad `dtype`; `NotADiffusionModelError` for a path that holds no model;
            `drop_t5` for a model without a T5 encoder to drop.
        OSError: `ModelNotFoundError`, a model that cannot be found.
    """
    torch_dtype = parse_dtype(dtype)
    name = model or DEFAULT_MODEL
    path = resolve_model(str(name))
    if path.is_dir() and pipeline_class(path) in MMDIT_FAMILIES:
        backbone = MMDiTBackbone.from_pretrained(path, torch_dtype=torch_dtype, drop_t5=drop_t5)
        backbone.name = str(name)
        return backbone.to(device, torch_dtype)
    if drop_t5:
        raise ValueError(f"`drop_t5` applies to SD3 / SD3.5 pipelines; {name} is not one.")
    backbone = DiffusionBackbone.from_pretrained(name, torch_dtype=torch_dtype, config=config)
    return backbone.to(device, torch_dtype)
