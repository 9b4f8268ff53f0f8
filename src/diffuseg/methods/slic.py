"""SLIC superpixels (scikit-image) as a segmentation baseline.

Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods", TPAMI 2012;
the implementation is `skimage.segmentation.slic`. It reads only the image, so no UNet runs.
It gives a floor for the unsupervised tables: any diffusion method should beat colour
superpixels matched with Hungarian.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..backbone.features import FeatureRequest, Features
from ..ops.masks import relabel_sequential
from ..types import Segmentation
from ._registry import MethodSpec

__all__ = ["SlicConfig", "segment", "SPEC"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlicConfig:
    """Hyperparameters of the SLIC baseline.

    Attributes:
        n_segments: approximate number of superpixels (skimage default 100).
        compactness: colour vs space trade-off; higher = squarer segments (skimage default 10).
        sigma: Gaussian smoothing before segmenting, in pixels (0 = none).
        image_size: side the image is resized to before segmenting; None keeps the given size.
        resize_mode: preprocessing mode ("crop", "squash" or "keep_aspect").
    """

    n_segments: int = 100
    compactness: float = 10.0
    sigma: float = 0.0
    image_size: int | None = None
    resize_mode: str = "crop"

    def __post_init__(self) -> None:
        if not isinstance(self.n_segments, int) or self.n_segments < 1:
            raise ValueError(f"`n_segments` must be a positive int, got {self.n_segments!r}.")
        if not self.compactness > 0:
            raise ValueError(f"`compactness` must be > 0, got {self.compactness!r}.")
        if self.sigma < 0:
            raise ValueError(f"`sigma` must be >= 0, got {self.sigma!r}.")
        _check_size(self.image_size, self.resize_mode)


def _check_size(image_size: int | None, resize_mode: str) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"`image_size` must be a positive int or None, got {image_size!r}.")
    modes = ("crop", "squash", "keep_aspect")
    if resize_mode not in modes:
        raise ValueError(f"`resize_mode` must be one of {modes}, got {resize_mode!r}.")


def segment(features: Features, config: SlicConfig) -> Segmentation:
    """Segment image 0 of `features` into SLIC superpixels.

    Args:
        features: needs only `images`, (1, 3, H, W) float32 in [0, 1].
        config: a `SlicConfig`.

    Returns:
        A `Segmentation` with int64 labels (H, W) in [0, K), K about `n_segments`.
    """
    try:
        from skimage.segmentation import slic
    except ImportError as e:  # optional dependency (extra "eval")
        raise ImportError(
            "this baseline requires scikit-image; install it with `pip install diffuseg[eval]`."
        ) from e

    if features.images is None:
        raise ValueError("the SLIC baseline needs `features.images`.")
    image = features.images[0].detach().float().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
    labels = slic(
        image.astype(np.float64),
        n_segments=config.n_segments,
        compactness=config.compactness,
        sigma=config.sigma,
        start_label=0,
        channel_axis=-1,
    )
    labels = relabel_sequential(torch.from_numpy(labels.astype(np.int64)))
    return Segmentation(labels=labels)


SPEC = MethodSpec(
    name="slic",
    config_cls=SlicConfig,
    segment=segment,
    requires=FeatureRequest(),
    description="Baseline: SLIC colour superpixels (scikit-image); no diffusion model.",
    extraction_fields=("image_size", "resize_mode"),
)
