"""SLIC superpixels (scikit-image) as a segmentation baseline.

Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods", TPAMI 2012;
the implementation is `skimage.segmentation.slic`. It reads only the image, so no UNet runs.
It gives a floor for the unsupervised tables: any diffusion method should beat colour
superpixels matched with Hungarian.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..backbone.features import Features
from ..ops.masks import relabel_sequential
from ..plan import Query, image_only
from ..types import Segmentation
from .slic_config import INFO, SlicConfig
from .spec import MethodSpec

__all__ = ["SlicConfig", "segment", "SPEC"]

logger = logging.getLogger(__name__)


def segment(
    features: Features, config: SlicConfig, query: Query | None = None, resources: Mapping[str, Any] | None = None
) -> Segmentation:
    """Segment image 0 of `features` into SLIC superpixels.

    Args:
        features: needs only `images`, (1, 3, H, W) float32 in [0, 1].
        config: a `SlicConfig`.
        query, resources: unused.

    Returns:
        A `Segmentation` with int64 labels (H, W) in [0, K), K about `n_segments`.
    """
    try:
        from skimage.segmentation import slic
    except ImportError as e:  # optional dependency (extra "eval")
        raise ImportError("this baseline requires scikit-image; install it with `pip install diffuseg[eval]`.") from e

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


SPEC = MethodSpec.from_info(
    INFO,
    plan=image_only,
    segment=segment,
)
