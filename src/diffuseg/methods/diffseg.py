"""DiffSeg: unsupervised zero-shot segmentation by iteratively merging self-attention maps.

Tian et al., "Diffuse, Attend, and Segment: Unsupervised Zero-Shot Segmentation using Stable
Diffusion", CVPR 2024. Ported from google/diffseg@77ea596 (TensorFlow/KerasCV) to diffusers.

One UNet pass at t=300 on the clean VAE latent with the empty prompt records all self-attention
maps; they are averaged per resolution (and over heads), aggregated to the highest resolution,
merged by symmetric KL distance from an anchor grid, optionally refined with k-means, and
upsampled to the image with a per-pixel argmax.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..backbone.features import FeatureRequest, Features
from ..imageio import RESIZE_MODES
from ..ops.attention import aggregate_self_attention
from ..ops.clustering import kmeans_refine, merge_attention
from ..ops.masks import maps_to_labels
from ..types import Segmentation
from ._registry import MethodSpec

__all__ = ["DiffSegConfig", "REQUIRES", "segment", "SPEC"]

logger = logging.getLogger(__name__)

#: All self-attention layers, head-averaged, as per-resolution running means (the reference
#: sums the 5/5/5/1 SD-1.x layers per resolution in the graph, diffusion_model.py l.49-120).
REQUIRES = FeatureRequest(self_attention=True)


@dataclass(frozen=True)
class DiffSegConfig:
    """Hyperparameters of DiffSeg (defaults: google/diffseg `benchmarks.ipynb`, COCO-Stuff-27).

    Attributes:
        kl_thresholds: τ, one symmetric-KL merge threshold per iteration (benchmarks cell 10:
            [1.1]*3 for COCO-Stuff; 0.9 for Cityscapes and the demo notebook).
        num_anchors_per_side: anchor grid side (NUM_POINTS = 16 -> 256 anchors).
        refine: k-means refinement of the proposals (off in the benchmarks, on in the demo).
        timestep: UNet timestep (both notebooks: 300).
        image_size: square input side; None = the model's native resolution, which is the
            reference's 512 on SD 1.x (utils.py l.23) and scales to SD 2-768 / SDXL.
        resize_mode: "crop" = square centre crop then resize (utils.py::process_image).
        add_noise: noise the latent to `timestep` (the reference feeds the clean latent).
        prompt: conditioning text ("" = unconditional context, as the reference).
        latent_mode: VAE posterior "mean" (the reference's ImageEncoder output) or "sample".
    """

    kl_thresholds: tuple[float, ...] = (1.1, 1.1, 1.1)
    num_anchors_per_side: int = 16
    refine: bool = False
    timestep: int = 300
    image_size: int | None = None
    resize_mode: str = "crop"
    add_noise: bool = False
    prompt: str = ""
    latent_mode: str = "mean"

    def __post_init__(self) -> None:
        if isinstance(self.kl_thresholds, (int, float)):
            object.__setattr__(self, "kl_thresholds", (float(self.kl_thresholds),) * 3)
        object.__setattr__(self, "kl_thresholds", tuple(float(t) for t in self.kl_thresholds))
        if not self.kl_thresholds or any(not t > 0 for t in self.kl_thresholds):
            raise ValueError(f"`kl_thresholds` must be non-empty and all > 0, got {self.kl_thresholds}.")
        if self.num_anchors_per_side < 1:
            raise ValueError(f"`num_anchors_per_side` must be >= 1, got {self.num_anchors_per_side}.")
        if self.timestep < 0:
            raise ValueError(f"`timestep` must be >= 0, got {self.timestep}.")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"`image_size` must be positive or None, got {self.image_size}.")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {RESIZE_MODES}, got {self.resize_mode!r}.")
        if self.latent_mode not in ("mean", "sample"):
            raise ValueError(f"`latent_mode` must be 'mean' or 'sample', got {self.latent_mode!r}.")


def segment(features: Features, config: DiffSegConfig = DiffSegConfig()) -> Segmentation:
    """Segment one image from its recorded self-attention maps.

    Args:
        features: `Features` of one image with `REQUIRES` recorded.
        config: hyperparameters.

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size, values in [0, K).

    Raises:
        ValueError: if `features` holds no self-attention maps or more than one image.
    """
    if not features.self_attention:
        raise ValueError("`features` holds no self-attention maps; extract with diffseg.REQUIRES.")
    if features.batch_size != 1:
        raise ValueError(f"`segment` takes the features of one image, got a batch of {features.batch_size}.")
    maps = {size: m[0] for size, m in features.by_resolution("self").items()}  # (h, w) -> (N, N)
    aggregated = aggregate_self_attention(maps)  # (R*R, R, R)
    side = min(aggregated.shape[1:])
    anchors = min(config.num_anchors_per_side, side)
    if anchors < config.num_anchors_per_side:
        logger.warning("%d anchors per side do not fit a %d-token grid; using %d.",
                       config.num_anchors_per_side, side, anchors)
    proposals = merge_attention(aggregated, anchors=anchors, thresholds=config.kl_thresholds)
    if config.refine:
        proposals = kmeans_refine(proposals, aggregated)
    labels = maps_to_labels(proposals, features.image_size)
    return Segmentation(labels=labels.cpu(), extras={"proposals": proposals.cpu()})


SPEC = MethodSpec(
    name="diffseg",
    config_cls=DiffSegConfig,
    segment=segment,
    requires=REQUIRES,
    open_vocabulary=False,
    description="DiffSeg (CVPR 2024): KL merging of self-attention maps, unsupervised.",
    extraction_fields=("timestep", "image_size", "resize_mode", "add_noise", "prompt", "latent_mode"),
)
