"""The settings of kmeanscolor: its config and what the command line shows of it (torch-free).

`diffuseg.methods.kmeanscolor` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import (
    check_positive,
    check_seed,
)
from .info import MethodInfo

_SPACES = ("rgb", "lab")


@dataclass(frozen=True)
class KMeansColorConfig:
    """Hyperparameters of the colour k-means baseline.

    Attributes:
        num_clusters: k, the number of segments (at most; empty clusters vanish); None = the
            number of the query's class names (with `diffuseg eval --classes gt-labels`, the true
            number of classes of each image: an oracle baseline).
        num_iterations: Lloyd iterations (stops early when assignments settle).
        color_space: "lab" (CIELAB, perceptual; scaled to [0, 1]) or "rgb" ([0, 1]).
        spatial_weight: weight of the (y, x) position, each scaled to [0, 1]; 0 = colour only.
        seed: seed of the generator used for subsampling and k-means++ seeding.
        max_fit_pixels: centres are fitted on at most this many randomly drawn pixels, then
            every pixel is assigned to its nearest centre (bounds the cost on large images).

    The image is clustered at its own size (or the caller's `Query.size`).
    """

    num_clusters: int | None = 6
    num_iterations: int = 20
    color_space: str = field(default="lab", metadata={"choices": _SPACES})
    spatial_weight: float = 0.0
    seed: int = 0
    max_fit_pixels: int = 65536

    def __post_init__(self) -> None:
        check_positive(self.num_clusters, "num_clusters", integer=True, allow_none=True)
        check_positive(self.num_iterations, "num_iterations", integer=True)
        if self.color_space not in _SPACES:
            raise ValueError(f"`color_space` must be one of {_SPACES}, got {self.color_space!r}.")
        check_positive(self.max_fit_pixels, "max_fit_pixels", integer=True)
        check_positive(self.spatial_weight, "spatial_weight", allow_zero=True)
        check_seed(self.seed)


INFO = MethodInfo(
    name="kmeans-color",
    kind="baseline",
    description="Baseline: k-means on pixel colour (CIELAB) and position; no diffusion model.",
    config_cls=KMeansColorConfig,
)
