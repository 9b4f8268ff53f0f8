"""The settings of slic: its config and what the command line shows of it (torch-free).

`diffuseg.methods.slic` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import (
    check_positive,
)
from .info import MethodInfo


@dataclass(frozen=True)
class SlicConfig:
    """Hyperparameters of the SLIC baseline.

    Attributes:
        n_segments: approximate number of superpixels (skimage default 100).
        compactness: colour vs space trade-off; higher = squarer segments (skimage default 10).
        sigma: Gaussian smoothing before segmenting, in pixels (0 = none).

    The image is segmented at its own size (or the caller's `Query.size`).
    """

    n_segments: int = 100
    compactness: float = 10.0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        check_positive(self.n_segments, "n_segments", integer=True)
        check_positive(self.compactness, "compactness")
        check_positive(self.sigma, "sigma", allow_zero=True)


INFO = MethodInfo(
    name="slic",
    kind="baseline",
    description="Baseline: SLIC colour superpixels (scikit-image); no diffusion model.",
    config_cls=SlicConfig,
)
