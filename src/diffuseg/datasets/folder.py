"""Dataset building blocks: a folder-backed dataset with a raw-label lookup table, an in-memory one.

Every dataset yields `Sample` (id, RGB image, int64 label map with 255 = ignore) and
carries its class names (package data, ``diffuseg/data/classes``, read by
`diffuseg.datasets.classes`).

Raw label values are mapped through a lookup table; a raw value that the dataset does not
define raises `ValueError` naming the file. An image or label file that cannot be read raises
`SampleReadError` (the runner skips it, logs it and counts it in the report).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import Sample

__all__ = ["ArrayDataset", "FolderDataset", "SampleReadError"]

logger = logging.getLogger(__name__)


class SampleReadError(OSError):
    """An image or label file exists in the index but cannot be read."""


def _lut(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """int16 lookup table raw value -> class id / IGNORE_INDEX; -1 marks undefined raw values."""
    lut = np.full(size, -1, dtype=np.int16)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


def _read_label_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"label file {path} has mode {im.mode!r}; expected a single-channel label map.")
        return np.asarray(im)


class FolderDataset:
    """A dataset given as (id, image path, label path) entries and a raw-label lookup table.

    Args:
        name: registry name (reports use it).
        class_names: the C class names; label ids are in [0, C).
        entries: (id, image path, label path) per sample.
        lut: int16 (V,) raw label value -> class id or 255; -1 = not a valid raw value.
        root: the dataset root (reports use it).
        split: the split name.
        read_label: reads a label file into an integer array (H, W).
        read_image: reads an image file into an RGB PIL image.
        palette: optional uint8 (C, 3) colours.
        background_class: class id of "background", if the dataset has one.
    """

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        entries: Sequence[tuple[str, Path, Path]],
        lut: np.ndarray,
        root: str | os.PathLike = "",
        split: str = "",
        read_label: Callable[[Path], np.ndarray] = _read_label_png,
        read_image: Callable[[Path], Image.Image] | None = None,
        palette: np.ndarray | None = None,
        background_class: int | None = None,
    ) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.entries = list(entries)
        self.lut = lut
        self.root = str(root)
        self.split = split
        self.palette = palette
        self.background_class = background_class
        self._read_label = read_label
        self._read_image = read_image

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        """Sample ids in order."""
        return [e[0] for e in self.entries]

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Sample:
        """Read sample `index`.

        Raises:
            SampleReadError: if the image or label file cannot be read.
            ValueError: if image and label sizes differ, or the label holds undefined values.
        """
        sid, image_path, label_path = self.entries[index]
        try:
            if self._read_image is not None:
                image = self._read_image(image_path)
            else:
                from ..imageio import load_image

                image = load_image(image_path)
        except (OSError, ValueError, SyntaxError) as e:
            raise SampleReadError(f"cannot read image {image_path}: {e}") from e
        try:
            raw = self._read_label(label_path)
        except (OSError, SyntaxError, KeyError) as e:
            raise SampleReadError(f"cannot read label {label_path}: {e}") from e
        if raw.ndim != 2:
            raise ValueError(f"label file {label_path} has shape {raw.shape}; expected (H, W).")
        if raw.shape != (image.height, image.width):
            raise ValueError(
                f"image {image_path} is {image.height}x{image.width} but label {label_path} is "
                f"{raw.shape[0]}x{raw.shape[1]} (H x W)."
            )
        label = self._map(raw, label_path)
        return Sample(sid, image, label, {"image_path": str(image_path), "label_path": str(label_path)})

    def _map(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raw = raw.astype(np.int64, copy=False)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi >= len(self.lut):
            bad = np.unique(raw[(raw < 0) | (raw >= len(self.lut))])[:10].tolist()
            raise ValueError(f"label file {path} has values {bad} that {self.name} does not define.")
        label = self.lut[raw].astype(np.int64)  # (H, W)
        if int(label.min()) < 0:
            bad = np.unique(raw[label < 0])[:10].tolist()
            raise ValueError(
                f"label file {path} has values {bad} that {self.name} does not define "
                f"(neither a class of its {len(self.class_names)} nor ignore)."
            )
        return label


class ArrayDataset:
    """An in-memory dataset: a list of `Sample` plus class names (tests, notebooks)."""

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        samples: Sequence[Sample],
        background_class: int | None = None,
    ) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.samples = list(samples)
        self.background_class = background_class

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        """Sample ids in order."""
        return [s.id for s in self.samples]

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)


# --------------------------------------------------------------------------- layouts
def _require(root: Path, name: str, layout: str, *paths: Path) -> None:
    missing = [p for p in (root, *paths) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{name}: {missing[0]} does not exist. `root` must be the folder the official "
            f"archive unpacks to, laid out as:\n{layout}"
        )


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"{name}: unknown `split` {split!r}; allowed: {list(allowed)}.")


def _list_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _nonempty(name: str, entries: list[Any], where: Path) -> list[Any]:
    if not entries:
        raise ValueError(f"{name}: no samples found under {where}; the dataset is empty.")
    return entries
