"""The settings of seg4diff: its config and what the command line shows of it (torch-free).

`diffuseg.methods.seg4diff` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import (
    SEG4DIFF_KL_THRESHOLD,
    check_positive,
    check_timestep,
)
from .info import MethodInfo


@dataclass(frozen=True)
class Seg4DiffConfig:
    """Hyperparameters of Seg4Diff's unsupervised mode (defaults: its SD3-medium configs).

    Attributes:
        layer: index of the recorded layer among the model's image→text attention layers in
            forward order (an MM-DiT's joint layers; a UNet's cross-attention layers); None = the
            middle one. SD3-medium: 9 (the preset).
        timestep: SD-scale timestep of the noised latent (372 = the code's sigma 0.515: see the
            module docstring).
        kl_threshold: symmetric-KL merge threshold (the code's ``self.kl_threshold = 0.1``).
        power: exponent after the per-pixel normalisation (``OUTPUT_POWER: 1.0``).
        image_size: model input side (the longer side); None = the model's native size.
    """

    layer: int | None = None
    timestep: int = 372
    kl_threshold: float = SEG4DIFF_KL_THRESHOLD
    power: float = 1.0
    image_size: int | None = None

    def __post_init__(self) -> None:
        check_positive(self.layer, "layer", integer=True, allow_zero=True, allow_none=True)
        check_timestep(self.timestep)
        check_positive(self.kl_threshold, "kl_threshold")
        check_positive(self.power, "power")
        check_positive(self.image_size, "image_size", integer=True, allow_none=True)


INFO = MethodInfo(
    name="seg4diff",
    kind="unsupervised",
    description="Seg4Diff (NeurIPS 2025): merges an empty prompt's text-token attention maps; unsupervised.",
    config_cls=Seg4DiffConfig,
)
