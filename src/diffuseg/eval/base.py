"""The dataset interface shared by the eval datasets and the synthetic scenes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

__all__ = ["Sample", "SegmentationDataset", "IGNORE_INDEX"]

IGNORE_INDEX = 255


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


@runtime_checkable
class SegmentationDataset(Protocol):
    """A sized, indexable collection of `Sample` with class names."""

    name: str
    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def __iter__(self) -> Iterator[Sample]: ...
