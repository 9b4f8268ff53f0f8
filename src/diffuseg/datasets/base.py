"""The dataset interface shared by the benchmark datasets and the synthetic scenes (`Sample` lives
in `diffuseg.types`, below both)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from ..sample import Sample

__all__ = ["Sample", "SegmentationDataset", "IGNORE_INDEX"]

IGNORE_INDEX = 255


@runtime_checkable
class SegmentationDataset(Protocol):
    """A sized, indexable collection of `Sample` with class names."""

    name: str
    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def __iter__(self) -> Iterator[Sample]: ...
