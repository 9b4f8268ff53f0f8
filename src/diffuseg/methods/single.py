"""The one-segment baseline: every pixel gets label 0.

Under Hungarian matching this scores the most frequent class of each image, the floor any
method must beat. It reads nothing from the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..backbone.features import FeatureRequest, Features
from ..types import Segmentation
from ._registry import MethodSpec

__all__ = ["SingleSegmentConfig", "segment", "SPEC"]

logger = logging.getLogger(__name__)

_MODES = ("crop", "squash", "keep_aspect")


@dataclass(frozen=True)
class SingleSegmentConfig:
    """Configuration of the one-segment baseline.

    Attributes:
        image_size: side the image is resized to; None keeps the given size.
        resize_mode: preprocessing mode ("crop", "squash" or "keep_aspect").
    """

    image_size: int | None = None
    resize_mode: str = "crop"

    def __post_init__(self) -> None:
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or self.image_size < 1
        ):
            raise ValueError(
                f"`image_size` must be a positive int or None, got {self.image_size!r}."
            )
        if self.resize_mode not in _MODES:
            raise ValueError(f"`resize_mode` must be one of {_MODES}, got {self.resize_mode!r}.")


def segment(features: Features, config: SingleSegmentConfig) -> Segmentation:
    """One segment covering image 0 of `features`.

    Args:
        features: needs only `images`, (1, 3, H, W) float32 in [0, 1].
        config: a `SingleSegmentConfig`.

    Returns:
        A `Segmentation` with int64 zeros (H, W).
    """
    h, w = features.image_size
    labels = torch.zeros((h, w), dtype=torch.int64)
    return Segmentation(labels=labels)


SPEC = MethodSpec(
    name="single-segment",
    config_cls=SingleSegmentConfig,
    segment=segment,
    requires=FeatureRequest(),
    description="Baseline: the whole image is one segment; no diffusion model.",
    extraction_fields=("image_size", "resize_mode"),
)
