"""The choices of `diffuseg.eval`'s settings, torch-free: ``diffuseg eval --help`` lists them
without loading PyTorch. Each is defined here once and re-exported where it is used
(`metrics.MATCHINGS`, `runner.CLASS_SETTINGS`, `runner.BACKGROUND_SWEEP`)."""

from __future__ import annotations

__all__ = ["MATCHINGS", "CLASS_SETTINGS", "BACKGROUND_SWEEP"]

#: How predicted ids are matched to classes (see `diffuseg.eval.metrics`).
MATCHINGS = ("none", "hungarian-per-image", "hungarian-dataset", "diffcut-background")

#: The class names each image's `Query` carries (`evaluate`'s ``classes``): ``all``, every class
#: of the dataset (true open vocabulary); ``gt-labels``, the image-level ground-truth labels (the
#: classes present in its label map), the papers' weakly supervised setting.
CLASS_SETTINGS = ("all", "gt-labels")

#: The background scores DiffSegmenter's evaluation scripts sweep (start 30, end 75, in
#: hundredths): 0.30, 0.31, ..., 0.74.
BACKGROUND_SWEEP = tuple(v / 100 for v in range(30, 75))
