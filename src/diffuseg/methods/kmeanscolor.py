"""k-means on pixel colours (optionally with position) as a segmentation baseline.

Lloyd's algorithm with k-means++ seeding, in numpy, seeded by the config's `seed` through its
own `np.random.Generator` (no global seeding). It reads only the image, so no UNet runs.
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
from .kmeanscolor_config import INFO, KMeansColorConfig
from .spec import MethodSpec

__all__ = ["KMeansColorConfig", "kmeans", "segment", "SPEC"]

logger = logging.getLogger(__name__)


def _nearest(points: np.ndarray, c: np.ndarray) -> np.ndarray:
    # squared distances via |p|^2 - 2 p.c + |c|^2, (N, k)
    dist = (points**2).sum(1, keepdims=True) - 2.0 * points @ c.T + (c**2).sum(1)[None]
    return dist.argmin(axis=1)


def kmeans(points: np.ndarray, k: int, num_iterations: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cluster `points` (N, D) float into at most `k` groups.

    Returns:
        The centres (k', D) float64 (k' <= k) and the int64 (N,) cluster index per point.
    """
    n = points.shape[0]
    k = min(k, n)
    # k-means++ seeding: each next centre drawn with probability ~ squared distance
    centres = [points[rng.integers(n)]]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)  # (N,)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            break
        centres.append(points[rng.choice(n, p=d2 / total)])
        d2 = np.minimum(d2, ((points - centres[-1]) ** 2).sum(axis=1))
    c = np.stack(centres)  # (k, D)
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(num_iterations):
        new = _nearest(points, c)
        if np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=len(c)).astype(np.float64)  # (k,)
        # per-dimension weighted bincounts: cluster sums without a Python loop over pixels
        sums = np.stack(
            [np.bincount(assign, weights=points[:, j], minlength=len(c)) for j in range(points.shape[1])],
            axis=1,
        )  # (k, D)
        keep = counts > 0
        c[keep] = sums[keep] / counts[keep, None]
    return c, _nearest(points, c)


def segment(
    features: Features,
    config: KMeansColorConfig,
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Cluster the pixels of image 0 of `features` by colour (and position).

    Args:
        features: needs only `images`, (1, 3, H, W) float32 in [0, 1].
        config: a `KMeansColorConfig`.
        query, resources: unused.

    Returns:
        A `Segmentation` with int64 labels (H, W) in [0, K), K <= `num_clusters`.
    """
    if features.images is None:
        raise ValueError("the k-means colour baseline needs `features.images`.")
    image = features.images[0].detach().float().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
    h, w, _ = image.shape
    if config.color_space == "lab":
        try:
            from skimage.color import rgb2lab
        except ImportError as e:  # optional dependency (extra "eval")
            raise ImportError(
                "this baseline requires scikit-image; install it with `pip install diffuseg[eval]`."
            ) from e

        # L in [0, 100], a/b in about [-128, 127] -> roughly [0, 1]
        image = rgb2lab(image.astype(np.float64)) / np.array([100.0, 255.0, 255.0]) + [0, 0.5, 0.5]
    pts = image.reshape(-1, 3).astype(np.float64)  # (H*W, 3)
    if config.spatial_weight > 0:
        yy, xx = np.mgrid[0:h, 0:w]
        pos = np.stack([yy / max(h - 1, 1), xx / max(w - 1, 1)], axis=-1).reshape(-1, 2)
        pts = np.concatenate([pts, config.spatial_weight * pos], axis=1)  # (H*W, 5)
    rng = np.random.default_rng(config.seed)
    fit = pts
    if len(pts) > config.max_fit_pixels:
        fit = pts[np.sort(rng.choice(len(pts), config.max_fit_pixels, replace=False))]
    k = config.num_clusters
    if k is None:
        if query is None or not query.classes:
            raise ValueError("`num_clusters` None takes k from the query's class names, but it has none.")
        k = len(query.classes)
    centres, _ = kmeans(fit, k, config.num_iterations, rng)
    assign = _nearest(pts, centres)  # (H*W,)
    labels = relabel_sequential(torch.from_numpy(assign.reshape(h, w)))
    return Segmentation(labels=labels)


SPEC = MethodSpec.from_info(
    INFO,
    plan=image_only,
    segment=segment,
)
