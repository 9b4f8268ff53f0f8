"""`Sample`: one labelled image of a dataset. Torch-free, so the dataset registry (and the
``diffuseg eval --help`` that lists it) loads without PyTorch; re-exported by `diffuseg.types`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Sample"]


@dataclass
class Sample:
    """One labelled image.

    Attributes:
        id: stable identifier (file stem or index), unique within the dataset.
        image: RGB PIL image.
        label: int64 array (H, W) of class ids in [0, num_classes) or `IGNORE_INDEX`, same size
            as `image`.
        meta: anything else (caption, file paths...).
    """

    id: str
    image: Image.Image
    label: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
