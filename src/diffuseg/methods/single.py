"""The one-segment baseline: every pixel gets label 0.

Under Hungarian matching this scores the most frequent class of each image, the floor any
method must beat. It reads nothing from the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..backbone.features import Features
from ..plan import Query, image_only
from ..types import Segmentation
from .single_config import INFO, SingleSegmentConfig
from .spec import MethodSpec

__all__ = ["SingleSegmentConfig", "segment", "SPEC"]

logger = logging.getLogger(__name__)


def segment(
    features: Features,
    config: SingleSegmentConfig,
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """One segment covering image 0 of `features`.

    Args:
        features: needs only `images`, (1, 3, H, W) float32 in [0, 1].
        config: a `SingleSegmentConfig`.
        query, resources: unused.

    Returns:
        A `Segmentation` with int64 zeros (H, W).
    """
    h, w = features.image_size
    labels = torch.zeros((h, w), dtype=torch.int64)
    return Segmentation(labels=labels)


SPEC = MethodSpec.from_info(
    INFO,
    plan=image_only,
    segment=segment,
)
