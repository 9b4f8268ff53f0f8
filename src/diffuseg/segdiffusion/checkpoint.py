"""Seg-diffusion checkpoints: the mask UNet as diffusers safetensors plus a JSON record.

Layout of a checkpoint folder::

    DIR/unet/config.json, DIR/unet/diffusion_pytorch_model.safetensors   the widened UNet
    DIR/segdiffusion.json                                                what it is (see below)

``segdiffusion.json`` holds ``format`` (this module's version), ``base_model`` (where the VAE,
text encoder, tokenizer and scheduler come from), ``prediction_type``, ``template`` and
``step``, plus anything the trainer adds (its config). Training state (optimizer, RNG, EMA) is
the trainer's and lives beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from ..backbone.protocol import Backbone

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "read_record", "shipped_checkpoint"]

FORMAT = 1
RECORD = "segdiffusion.json"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, damaged or not a Seg-diffusion checkpoint."""


def save_checkpoint(directory: str | os.PathLike, unet: nn.Module, record: dict[str, Any]) -> Path:
    """Write `unet` (safetensors) and `record` (JSON, with ``format``) into `directory`.

    The record is written last, through a temp file and a rename, so a folder whose record
    exists holds a complete UNet.

    Returns:
        The folder.
    """
    from ..outputs import atomic_write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    data = {"format": FORMAT, **record}
    atomic_write(directory / RECORD, json.dumps(data, indent=1, default=str).encode(), overwrite=True)
    return directory


def read_record(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a checkpoint folder.

    Raises:
        CheckpointError: naming the file, if it is missing, not JSON, or of another format.
    """
    path = Path(directory) / RECORD
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: `checkpoint` must be a Seg-diffusion checkpoint folder "
            f"(made by `diffuseg train segdiffusion`, holding {RECORD} and unet/)."
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: expected a Seg-diffusion record of format {FORMAT}, got {record!r:.200}.")
    return record


def load_checkpoint(directory: str | os.PathLike, device: Any = None, dtype: Any = None) -> tuple[nn.Module, dict]:
    """Load the mask UNet and its record.

    Raises:
        CheckpointError: naming the file and what was expected, for a missing or damaged UNet,
            or one whose input is not the image latent plus the mask latent.
    """
    from diffusers import UNet2DConditionModel

    directory = Path(directory)
    record = read_record(directory)
    path = directory / "unet"
    try:
        unet = UNet2DConditionModel.from_pretrained(path, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot load the mask UNet (diffusers safetensors expected): {e}") from None
    if unet.config.in_channels != 2 * unet.config.out_channels:
        raise CheckpointError(
            f"{path}: the UNet reads {unet.config.in_channels} channels; a Seg-diffusion UNet reads the image "
            f"latent and the mask latent ({2 * unet.config.out_channels})."
        )
    if device is not None:
        unet.to(device)
    return unet.eval().requires_grad_(False), record


def shipped_checkpoint(backbone: Backbone | None) -> str | None:
    """The proving-ground checkpoint shipped with the package (``data/segdiffusion-toy``,
    trained from the toy model; its ``TRAINING.json`` says how) when `backbone` is the toy model
    (``--model toy``); None for any other model."""
    from ..backbone.loading import toy_model_path

    if backbone is None or getattr(backbone, "name", None) != "toy":
        return None
    path = toy_model_path().parent / "segdiffusion-toy"
    return str(path) if (path / RECORD).is_file() else None
