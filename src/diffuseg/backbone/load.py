"""`load_backbone`: a ready `DiffusionBackbone` from plain arguments (model, config, device,
dtype), the one way the CLI, the batch engine's workers, the eval runner and the demo load it.
`DTYPES` / `parse_dtype` are `diffuseg.dtypes`'s, re-exported."""

from __future__ import annotations

import torch

from ..dtypes import DTYPES, parse_dtype
from .backbone import DiffusionBackbone
from .loading import DEFAULT_MODEL, resolve_model
from .mmdit import MMDIT_FAMILIES, MMDiTBackbone, pipeline_class
from .single_file_mmdit import is_mmdit_file, load_mmdit_file

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
            transformer (SD3, SD3.5, FLUX: `MMDIT_FAMILIES`) gives an `MMDiTBackbone`, and so
            does an original-layout SD3 / SD3.5 / FLUX.1 transformer file (``sd3.5_large.safetensors``,
            ``flux1-dev.safetensors``) with `config` (`single_file_mmdit`).
        config: for single-file checkpoints, a diffusers folder or hub id with the matching
            component configs: for a Stable Diffusion file the model's diffusers configs
            (`single_file`); for a diffusion-transformer file the ``StableDiffusion3Pipeline`` /
            ``FluxPipeline`` folder of the same model, which gives the VAE, text encoders,
            tokenizers and scheduler (only its transformer weights are not needed).
        device: torch device of the model.
        dtype: weight dtype (`parse_dtype`); None = float32.
        drop_t5: SD3 / SD3.5: leave the T5 text encoder out (`MMDiTBackbone.from_pretrained`).

    Returns:
        A `DiffusionBackbone` (UNet models) or an `MMDiTBackbone`, on `device` in `dtype`.

    Raises:
        ValueError: a bad `dtype`; `NotADiffusionModelError` for a path that holds no model, or a
            single file that does not fit `config`; `drop_t5` for a model without a T5 encoder
            to drop; a diffusion-transformer file without `config`.
        OSError: `ModelNotFoundError`, a model that cannot be found.
    """
    torch_dtype = parse_dtype(dtype)
    name = model or DEFAULT_MODEL
    path = resolve_model(str(name))
    if path.is_dir() and pipeline_class(path) in MMDIT_FAMILIES:
        backbone = MMDiTBackbone.from_pretrained(path, torch_dtype=torch_dtype, drop_t5=drop_t5)
        backbone.name = str(name)
        return backbone.to(device, torch_dtype)
    if path.is_file() and is_mmdit_file(path, config):
        backbone = load_mmdit_file(path, config, torch_dtype=torch_dtype, drop_t5=drop_t5)
        backbone.name = str(name)
        return backbone.to(device, torch_dtype)
    if drop_t5:
        raise ValueError(f"`drop_t5` applies to SD3 / SD3.5 pipelines; {name} is not one.")
    backbone = DiffusionBackbone.from_pretrained(name, torch_dtype=torch_dtype, config=config)
    return backbone.to(device, torch_dtype)
