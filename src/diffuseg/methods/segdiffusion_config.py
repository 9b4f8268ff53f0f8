"""The settings of segdiffusion: its config and what the command line shows of it (torch-free).

`diffuseg.methods.segdiffusion` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..labeling.spans import check_template
from ..settings import (
    Resource,
    check_positive,
)
from .info import MethodInfo

#: DDIM timestep spacings (`SegDiffusionConfig.timestep_spacing`).
TIMESTEP_SPACINGS = ("trailing", "leading")


@dataclass(frozen=True)
class SegDiffusionConfig:
    """Settings of Seg-diffusion inference (defaults: the reference pipeline).

    Attributes:
        template: the class prompt (``run_inference.py`` l.156: "a photo of a {c}").
        steps: DDIM steps (``denoising_steps=10``).
        ensemble: samples per class, averaged (``ensemble_size=10``).
        background_threshold: the constant score of a "background" class against the classes'
            mask probabilities in [0, 1]; unused without a background class.
        image_size: model input side (the longer side); None = the base model's native size
            (512 for SD 2-base, 768 for SD 2; the reference processes at 384).
        timestep_spacing: DDIM timesteps, "trailing" (default: the first step at the noise level
            of the pure noise it starts from) or "leading" (the reference's SD 2 scheduler: a bug
            for a sampler that starts from pure noise, `SegDiffusionSampler`).
    """

    template: str = "a photo of a {class}"
    steps: int = 10
    ensemble: int = 10
    background_threshold: float = 0.5
    image_size: int | None = None
    timestep_spacing: str = field(default="trailing", metadata={"choices": TIMESTEP_SPACINGS})

    def __post_init__(self) -> None:
        check_template(self.template)
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}.")
        check_positive(self.steps, "steps", integer=True)
        check_positive(self.ensemble, "ensemble", integer=True)
        b = self.background_threshold
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b <= 1.0:
            raise ValueError(f"`background_threshold` must be a number in [0, 1], got {b!r}.")
        check_positive(self.image_size, "image_size", integer=True, allow_none=True)


def _load(value: str, device: Any, dtype: Any) -> Any:
    """A `MaskModel` of the checkpoint folder `value`."""
    from ..segdiffusion.checkpoint import load_checkpoint
    from ..segdiffusion.sampler import MaskModel

    unet, record = load_checkpoint(value, device, dtype)
    return MaskModel(unet, record, str(value))


def _default(backbone: Any) -> str | None:
    from ..segdiffusion.checkpoint import shipped_checkpoint

    return shipped_checkpoint(backbone)


#: The fine-tuned mask UNet: a checkpoint folder (``--checkpoint DIR``) or a `MaskModel`; on the
#: toy model the shipped proving-ground checkpoint when none is given.
CHECKPOINT = Resource(
    "checkpoint",
    "a Seg-diffusion checkpoint folder made by `diffuseg train segdiffusion` (default on --model toy: the shipped one)",
    load=_load,
    default=_default,
)


INFO = MethodInfo(
    name="segdiffusion",
    kind="open-vocabulary",
    description="Seg-diffusion: a fine-tuned UNet denoises one mask per class; needs --classes and "
    "--checkpoint DIR (shipped for --model toy).",
    resources=(CHECKPOINT,),
    config_cls=SegDiffusionConfig,
)
